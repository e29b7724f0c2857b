//! The lifecycle engine against real sandboxes: state machine, get-or-create under
//! concurrency, the owner's home volume, timeouts that understand activity, warm pools,
//! tenancy, and re-adoption after the daemon's state is lost. Needs root.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use warren_core::{Caller, Config, CoreError, ListFilter, Manager};
use warren_runtime::Paths;
use warren_types::api::{
    CreateSandbox, PoolSpec, SandboxState, SetTimeout, TimeoutAction, WireCode,
};
use warren_types::proto::{Command, ExecRequest};

/// A test's own run and data directories; dropping it ends every sandbox it made.
struct Env {
    root: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        let root = test_root().join(format!("core-{name}"));
        let _ = std::fs::remove_dir_all(&root);
        Env { root }
    }

    fn config(&self) -> Config {
        let mut c = Config::new(
            Paths {
                run: self.root.join("run"),
                data: self.root.join("data"),
            },
            env!("CARGO_BIN_EXE_warren").into(),
        );
        c.reaper_interval = Duration::from_millis(200);
        c.disk_interval = Duration::from_millis(200);
        c
    }

    async fn manager(&self) -> Arc<Manager> {
        Manager::open(self.config()).await.unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed assertion left running goes, then the test's directories.
        stop_sandboxes_under(&self.root.join("run"));
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn alice() -> Caller {
    Caller::tenant("alice")
}

async fn run(mgr: &Arc<Manager>, who: &Caller, key: &str, script: &str) -> String {
    let client = mgr.agent(who, key).await.unwrap().into_client();
    let out = client
        .exec(ExecRequest {
            command: Some(Command::Shell(script.into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_state_machine_holds_and_refuses_invalid_moves() {
    if !can_run("the_state_machine_holds_and_refuses_invalid_moves") {
        return;
    }
    let env = Env::new("states");
    let mgr = env.manager().await;
    let who = alice();
    let req = CreateSandbox {
        name: Some("lab".into()),
        ..Default::default()
    };
    let (sb, created) = mgr.create(&who, req).await.unwrap();
    assert!(created);
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(
        run(&mgr, &who, "lab", "echo hi > /root/kept; echo ok").await,
        "ok\n"
    );
    // The writable layer's disk use shows in the metrics once the reaper has measured it.
    run(
        &mgr,
        &who,
        "lab",
        "head -c 5000000 /dev/urandom > /root/blob",
    )
    .await;
    let needle = format!("warren_sandbox_disk_bytes{{sandbox=\"{}\"}} ", sb.id);
    wait_for("the disk use to be measured", 20, || {
        mgr.metrics(&Caller::operator("root"))
            .lines()
            .find_map(|l| l.strip_prefix(&needle)?.parse::<u64>().ok())
            .is_some_and(|b| b >= 5_000_000)
    })
    .await;

    mgr.pause(&who, "lab").await.unwrap();
    let e = mgr.agent(&who, "lab").await.unwrap_err();
    assert_eq!(e.code(), WireCode::InvalidState);
    assert!(e.to_string().contains("resume it first"), "{e}");
    let e = mgr.start(&who, "lab").await.unwrap_err();
    assert_eq!(e.code(), WireCode::InvalidState);
    mgr.resume(&who, "lab").await.unwrap();

    let stopped = mgr.stop(&who, "lab").await.unwrap();
    assert_eq!(stopped.state, SandboxState::Stopped);
    assert!(matches!(
        mgr.pause(&who, "lab").await,
        Err(CoreError::InvalidState(_))
    ));
    mgr.start(&who, "lab").await.unwrap();
    assert_eq!(
        run(&mgr, &who, "lab", "cat /root/kept").await,
        "hi\n",
        "files survive stop"
    );

    mgr.terminate(&who, "lab").await.unwrap();
    assert!(matches!(mgr.get(&who, "lab"), Err(CoreError::NotFound(_))));
    assert!(
        mgr.logs(&who, &sb.id).is_err(),
        "a terminated sandbox is gone from the API"
    );
}

#[tokio::test]
async fn a_terminate_answers_once_the_processes_are_gone_and_settle_finishes_the_rest() {
    if !can_run("a_terminate_answers_once_the_processes_are_gone_and_settle_finishes_the_rest") {
        return;
    }
    let env = Env::new("end");
    let mgr = env.manager().await;
    let who = alice();
    let req = CreateSandbox {
        resources: warren_types::spec::Resources {
            disk: Some(32 << 20),
            ..Default::default()
        },
        ..Default::default()
    };
    let (sb, _) = mgr.create(&who, req).await.unwrap();
    run(&mgr, &who, &sb.id, "sleep 1000 & echo x > /root/f").await;
    let cgroups = warren_runtime::bundle::cgroups_everywhere(&format!("warren-{}", sb.id));
    assert!(!cgroups.is_empty(), "no cgroup found for a running sandbox");
    let procs: Vec<PathBuf> = cgroups
        .iter()
        .map(|(_, p)| p.join("cgroup.procs"))
        .collect();
    mgr.terminate(&who, &sb.id).await.unwrap();
    // Answered: nothing of it runs any more, whatever of its cgroup is still there.
    for p in &procs {
        let left = std::fs::read_to_string(p).unwrap_or_default();
        assert!(left.trim().is_empty(), "{}: {left}", p.display());
    }
    assert!(matches!(mgr.get(&who, &sb.id), Err(CoreError::NotFound(_))));
    mgr.settle().await;
    let run_dir = env.root.join("run/sandboxes").join(&sb.id);
    assert!(!run_dir.exists(), "its run directory is left");
    assert!(!env.root.join("data/sandboxes").join(&sb.id).exists());
    let left = warren_runtime::bundle::cgroups_everywhere(&format!("warren-{}", sb.id));
    assert!(left.is_empty(), "{left:?}");
    let loops = std::process::Command::new("losetup")
        .args(["-n", "-O", "BACK-FILE", "-l"])
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
    assert!(
        !loops.contains(&sb.id),
        "its disk's loop device stayed: {loops}"
    );
}

#[tokio::test]
async fn fifty_parallel_get_or_creates_make_one_sandbox() {
    if !can_run("fifty_parallel_get_or_creates_make_one_sandbox") {
        return;
    }
    let env = Env::new("getorcreate");
    let mgr = env.manager().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let mgr = mgr.clone();
        tasks.push(tokio::spawn(async move {
            let req = CreateSandbox {
                name: Some("shared".into()),
                get_or_create: true,
                ..Default::default()
            };
            mgr.create(&alice(), req)
                .await
                .map(|(s, created)| (s.id, created))
        }));
    }
    let mut ids = Vec::new();
    let mut made = 0;
    for t in tasks {
        let (id, created) = t.await.unwrap().unwrap();
        made += created as u32;
        ids.push(id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one sandbox for one name");
    assert_eq!(made, 1);
    assert_eq!(mgr.list(&alice(), &ListFilter::default()).unwrap().len(), 1);
    mgr.terminate(&alice(), "shared").await.unwrap();
}

#[tokio::test]
async fn the_home_volume_outlives_its_sandbox_and_is_the_owners_alone() {
    if !can_run("the_home_volume_outlives_its_sandbox_and_is_the_owners_alone") {
        return;
    }
    let env = Env::new("home");
    let mgr = env.manager().await;
    let who = alice();
    let mk = |owner: &str| CreateSandbox {
        owner: Some(owner.into()),
        ..Default::default()
    };
    let (a, _) = mgr.create(&who, mk("ann")).await.unwrap();
    run(&mgr, &who, &a.id, "echo notes > /home/user/notes.txt").await;
    mgr.terminate(&who, &a.id).await.unwrap();

    let (b, _) = mgr.create(&who, mk("ann")).await.unwrap();
    assert_eq!(
        run(&mgr, &who, &b.id, "cat /home/user/notes.txt").await,
        "notes\n"
    );
    let (c, _) = mgr.create(&who, mk("bob")).await.unwrap();
    assert_eq!(
        run(&mgr, &who, &c.id, "ls -A /home/user | wc -l").await,
        "0\n"
    );
    mgr.terminate(&who, &b.id).await.unwrap();
    // Right after the terminate its helper may still be unmounting the home: a resize
    // (e2fsck, resize2fs) waits for that, and the files come through.
    let size = mgr.volume(&who, "ann").await.unwrap().size_bytes.unwrap();
    let grown = mgr
        .resize_volume(&who, "ann", size + (16 << 20))
        .await
        .unwrap();
    assert_eq!(grown.size_bytes, Some(size + (16 << 20)));
    let (d, _) = mgr.create(&who, mk("ann")).await.unwrap();
    assert_eq!(
        run(&mgr, &who, &d.id, "cat /home/user/notes.txt").await,
        "notes\n"
    );
    mgr.terminate(&who, &d.id).await.unwrap();
    mgr.terminate(&who, &c.id).await.unwrap();
}

#[tokio::test]
async fn an_owners_first_sandboxes_started_at_once_share_one_home() {
    if !can_run("an_owners_first_sandboxes_started_at_once_share_one_home") {
        return;
    }
    let env = Env::new("home-race");
    let mgr = env.manager().await;
    let who = alice();
    let cat = || CreateSandbox {
        owner: Some("cat".into()),
        ..Default::default()
    };
    // Six sandboxes of a new owner at once: each helper finds the home volume new.
    let made = futures_util::future::join_all((0..6).map(|_| mgr.create(&who, cat()))).await;
    let ids: Vec<String> = made
        .into_iter()
        .map(|r| r.expect("a create of the owner's first sandboxes").0.id)
        .collect();
    // One home, the same in every sandbox: what one writes, all read, and it is kept.
    for (i, id) in ids.iter().enumerate() {
        run(&mgr, &who, id, &format!("echo {i} > /home/user/from-{i}")).await;
    }
    for id in &ids {
        assert_eq!(
            run(
                &mgr,
                &who,
                id,
                "cat /home/user/from-* | sort -n | tr '\\n' ' '"
            )
            .await,
            "0 1 2 3 4 5 ",
            "{id} sees another home"
        );
    }
    for id in &ids {
        mgr.terminate(&who, id).await.unwrap();
    }
    let (again, _) = mgr.create(&who, cat()).await.unwrap();
    assert_eq!(
        run(&mgr, &who, &again.id, "ls /home/user | wc -l").await,
        "6\n"
    );
    mgr.terminate(&who, &again.id).await.unwrap();
}

#[tokio::test]
async fn busy_sandboxes_are_not_idle_and_idle_ones_expire() {
    if !can_run("busy_sandboxes_are_not_idle_and_idle_ones_expire") {
        return;
    }
    let env = Env::new("idle");
    let mgr = env.manager().await;
    let who = alice();
    let req = CreateSandbox {
        idle_timeout_secs: Some(1),
        on_timeout: Some(TimeoutAction::Pause),
        ..Default::default()
    };
    let (sb, _) = mgr.create(&who, req).await.unwrap();
    // A computation with no client connected: 3 s of CPU, in the background.
    let client = mgr.agent(&who, &sb.id).await.unwrap().into_client();
    let mut bg = ExecRequest {
        command: Some(Command::Shell(
            "timeout 3 sh -c 'while :; do :; done'".into(),
        )),
        ..Default::default()
    };
    bg.background = true;
    drop(client.exec(bg).await.unwrap());
    drop(client);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        mgr.get(&who, &sb.id).unwrap().state,
        SandboxState::Running,
        "a sandbox busy computing is not idle"
    );
    wait_for("the idle timeout", 10, || {
        mgr.get(&who, &sb.id).unwrap().state == SandboxState::Paused
    })
    .await;
    let logs = mgr.logs(&who, &sb.id).unwrap();
    assert!(
        logs.iter()
            .any(|e| e.kind == "timeout" && e.message.contains("idle")),
        "{logs:?}"
    );
    mgr.terminate(&who, &sb.id).await.unwrap();
}

#[tokio::test]
async fn the_lifetime_can_be_extended_and_then_ends() {
    if !can_run("the_lifetime_can_be_extended_and_then_ends") {
        return;
    }
    let env = Env::new("lifetime");
    let mgr = env.manager().await;
    let who = alice();
    let req = CreateSandbox {
        timeout_secs: Some(1),
        ..Default::default()
    };
    let (sb, _) = mgr.create(&who, req).await.unwrap();
    let t = SetTimeout {
        timeout_secs: Some(3),
        ..Default::default()
    };
    mgr.set_timeout(&who, &sb.id, t).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(mgr.get(&who, &sb.id).is_ok(), "the extension holds");
    wait_for("the lifetime to end", 10, || mgr.get(&who, &sb.id).is_err()).await;
    // Its processes are gone when it ends; the rest of its teardown is done at `settle`.
    mgr.settle().await;
    assert!(!env.root.join("run/sandboxes").join(&sb.id).exists());
}

#[tokio::test]
async fn a_warm_pool_hands_out_ready_sandboxes() {
    if !can_run("a_warm_pool_hands_out_ready_sandboxes") {
        return;
    }
    let env = Env::new("pool");
    let mgr = env.manager().await;
    mgr.set_pool(
        &Caller::host_root("default"),
        PoolSpec {
            template: "host".into(),
            resources: Default::default(),
            network: Default::default(),
            isolation: Default::default(),
            min: 2,
            max: 3,
            ttl_secs: None,
        },
    )
    .await
    .unwrap();
    wait_for("the pool to fill", 20, || mgr.pools()[0].ready == 2).await;
    let who = alice();
    let req = CreateSandbox {
        name: Some("fast".into()),
        home_volume: Some(false),
        ..Default::default()
    };
    let t = Instant::now();
    let (sb, created) = mgr.create(&who, req).await.unwrap();
    let took = t.elapsed();
    assert!(created);
    assert_eq!(mgr.pools()[0].hits, 1);
    assert_eq!(sb.owner, "alice");
    assert_eq!(run(&mgr, &who, "fast", "echo warm").await, "warm\n");
    println!("pool acquire took {took:?}");
    // A request that does not fit the pool is made fresh.
    let (other, _) = mgr.create(&who, CreateSandbox::default()).await.unwrap();
    assert_eq!(mgr.pools()[0].hits, 1);
    wait_for("the pool to refill", 20, || mgr.pools()[0].ready == 2).await;
    // Pool members belong to no tenant.
    assert_eq!(mgr.list(&who, &ListFilter::default()).unwrap().len(), 2);
    mgr.terminate(&who, &sb.id).await.unwrap();
    mgr.terminate(&who, &other.id).await.unwrap();
    let m = mgr.metrics(&Caller::operator("root"));
    assert!(
        m.contains("warren_pool_requests_total{template=\"host\",outcome=\"hit\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_pool_removed_while_it_fills_leaves_no_member_behind() {
    if !can_run("a_pool_removed_while_it_fills_leaves_no_member_behind") {
        return;
    }
    let env = Env::new("pool-race");
    let mgr = env.manager().await;
    let pool = |min, max| PoolSpec {
        template: "host".into(),
        resources: Default::default(),
        network: Default::default(),
        isolation: Default::default(),
        min,
        max,
        ttl_secs: None,
    };
    let operator = Caller::host_root("default");
    // Removed at moments all through the reaper's period (200 ms here; its pass starts
    // the fills): some removals come while members are being made.
    for wait_ms in (0..210).step_by(7) {
        mgr.set_pool(&operator, pool(3, 3)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        mgr.set_pool(&operator, pool(0, 0)).await.unwrap();
        mgr.settle().await;
        let left: Vec<_> = std::fs::read_dir(env.root.join("run/sandboxes"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "removed {wait_ms} ms after it was set, the pool left {left:?}"
        );
    }
    assert!(mgr.pools().is_empty());
}

#[tokio::test]
async fn another_tenant_sees_nothing() {
    if !can_run("another_tenant_sees_nothing") {
        return;
    }
    let env = Env::new("tenants");
    let mgr = env.manager().await;
    let (sb, _) = mgr
        .create(
            &alice(),
            CreateSandbox {
                name: Some("mine".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let eve = Caller::tenant("eve");
    for key in [sb.id.as_str(), "mine", "alice/mine"] {
        assert!(matches!(mgr.get(&eve, key), Err(CoreError::NotFound(_))));
        assert!(matches!(
            mgr.pause(&eve, key).await,
            Err(CoreError::NotFound(_))
        ));
        assert!(matches!(
            mgr.agent(&eve, key).await,
            Err(CoreError::NotFound(_))
        ));
        assert!(matches!(
            mgr.terminate(&eve, key).await,
            Err(CoreError::NotFound(_))
        ));
        assert!(mgr.logs(&eve, key).is_err());
    }
    assert!(mgr.list(&eve, &ListFilter::default()).unwrap().is_empty());
    // The sandbox's own token reaches that sandbox only.
    let token = sb
        .access_token
        .clone()
        .expect("a new sandbox's answer has its token");
    let scoped = mgr.authenticate_sandbox(&sb.id, &token).unwrap();
    // Shown once: looking the sandbox up again does not show it.
    assert_eq!(mgr.get(&alice(), &sb.id).unwrap().access_token, None);
    // Nothing in the store is the token.
    let mut db = std::fs::read(env.root.join("data/warren.db")).unwrap();
    db.extend(std::fs::read(env.root.join("data/warren.db-wal")).unwrap_or_default());
    assert!(
        !db.windows(token.len()).any(|w| w == token.as_bytes()),
        "the store holds the access token"
    );
    assert!(mgr.agent(&scoped, &sb.id).await.is_ok());
    assert!(mgr.authenticate_sandbox(&sb.id, "wrong").is_none());
    let key = mgr.create_api_key("eve", false).unwrap();
    assert_eq!(mgr.authenticate(&key).unwrap().tenant, "eve");
    assert!(mgr.authenticate("wrn_nope").is_none());
    mgr.terminate(&alice(), "mine").await.unwrap();
}

#[tokio::test]
async fn a_new_manager_readopts_running_sandboxes() {
    if !can_run("a_new_manager_readopts_running_sandboxes") {
        return;
    }
    let env = Env::new("adopt");
    let who = alice();
    let id = {
        let mgr = env.manager().await;
        let (sb, _) = mgr
            .create(
                &who,
                CreateSandbox {
                    name: Some("keep".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        run(&mgr, &who, "keep", "echo before > /tmp/f").await;
        sb.id
        // The manager goes away here, as a crashed daemon would; the sandbox runs on.
    };
    let mgr = env.manager().await;
    assert_eq!(mgr.get(&who, "keep").unwrap().state, SandboxState::Running);
    assert_eq!(run(&mgr, &who, "keep", "cat /tmp/f").await, "before\n");
    let logs = mgr.logs(&who, &id).unwrap();
    assert!(logs.iter().any(|e| e.kind == "adopted"), "{logs:?}");
    mgr.terminate(&who, "keep").await.unwrap();
}

#[tokio::test]
async fn sessions_walk_down_when_the_client_leaves_and_come_back() {
    use warren_types::api::{OpenSession, SessionState, SessionTimeouts};
    if !can_run("sessions_walk_down_when_the_client_leaves_and_come_back") {
        return;
    }
    let env = Env::new("sessions");
    let mgr = env.manager().await;
    let who = alice();
    let quick = SessionTimeouts {
        active_secs: 1,
        detached_secs: 1,
        suspended_secs: 60,
    };
    let open = |client: &str| OpenSession {
        client: client.into(),
        sandbox: CreateSandbox::default(),
        timeouts: Some(quick),
    };
    let s = mgr.open_session(&who, open("ann")).await.unwrap();
    assert_eq!(s.state, SessionState::Active);
    assert_eq!(s.sandbox.owner, "ann");
    assert_eq!(s.sandbox.name.as_deref(), Some("default"));
    run(&mgr, &who, &s.sandbox.id, "echo kept > /tmp/mark").await;

    // No heartbeat: active → detached → suspended (sandbox paused).
    wait_for("the session to be suspended", 15, || {
        mgr.session(&who, &s.id).unwrap().state == SessionState::Suspended
    })
    .await;
    assert_eq!(
        mgr.get(&who, &s.sandbox.id).unwrap().state,
        SandboxState::Paused
    );
    let m = mgr.metrics(&Caller::operator("root"));
    assert!(m.contains("warren_sessions{state=\"suspended\"} 1"), "{m}");

    // The client is back: active, its sandbox running with its files.
    let back = mgr.heartbeat(&who, &s.id).await.unwrap();
    assert_eq!(back.state, SessionState::Active);
    assert_eq!(back.sandbox.state, SandboxState::Running);
    assert_eq!(
        run(&mgr, &who, &s.sandbox.id, "cat /tmp/mark").await,
        "kept\n"
    );

    // Released with keep-alive, the next session finds the same default sandbox.
    mgr.release_session(&who, &s.id, true).await.unwrap();
    let again = mgr.open_session(&who, open("ann")).await.unwrap();
    assert_ne!(again.id, s.id);
    assert_eq!(
        again.sandbox.id, s.sandbox.id,
        "one default sandbox per client"
    );
    // Released without keep-alive, the sandbox goes.
    mgr.release_session(&who, &again.id, false).await.unwrap();
    assert!(mgr.get(&who, &s.sandbox.id).is_err());
    assert!(mgr.sessions(&who).unwrap().is_empty());
    // Another tenant sees no session.
    assert!(mgr.session(&Caller::tenant("eve"), &again.id).is_err());
}

#[tokio::test]
async fn a_taken_host_port_is_the_callers_error() {
    if !can_run("a_taken_host_port_is_the_callers_error") {
        return;
    }
    let env = Env::new("ports");
    let mgr = env.manager().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let req = CreateSandbox {
        publish: vec![warren_types::spec::PortMap {
            host: port,
            sandbox: 80,
        }],
        ..Default::default()
    };
    let e = mgr.create(&alice(), req).await.unwrap_err();
    assert_eq!(e.code(), WireCode::InvalidRequest, "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    assert!(mgr
        .list(&alice(), &ListFilter::default())
        .unwrap()
        .is_empty());
    // Free, it is published; and a terminate frees it before it answers: the next create
    // that asks for it gets it.
    drop(taken);
    // One of the range tenants publish on, free now.
    let port = (20000..30000u16)
        .rev()
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .unwrap();
    let publish = vec![warren_types::spec::PortMap {
        host: port,
        sandbox: 80,
    }];
    for _ in 0..3 {
        let req = CreateSandbox {
            publish: publish.clone(),
            ..Default::default()
        };
        let (sb, _) = mgr.create(&alice(), req).await.unwrap();
        mgr.terminate(&alice(), &sb.id).await.unwrap();
    }
}
