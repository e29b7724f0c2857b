//! The client against a live daemon: every part of the API it offers, on the unix socket
//! and on TCP with a key. Needs root and the `warren` binary (see common/mod.rs); each
//! test runs a daemon of its own, removes what it made and stops it.

mod common;

use std::time::{Duration, Instant};

use common::{block_on, can_run, Daemon};
use warren_client::warren_types::api::{
    CreateSandbox, OpenSession, SandboxState, SetTimeout, WireCode,
};
use warren_client::warren_types::proto::{FileType, WinSize};
use warren_client::{
    argv, shell, Error, ListFilter, Notice, Output, SnapshotRequest, TerminalEvent, TerminalOptions,
};

#[test]
fn exec_streams_output_as_it_comes_takes_stdin_and_reports_the_exit() {
    let Some(bin) = can_run("exec_streams_output_as_it_comes_takes_stdin_and_reports_the_exit")
    else {
        return;
    };
    let d = Daemon::start(bin, false);
    let c = d.client();
    block_on(async {
        let sb = c.create(&CreateSandbox::default()).await.unwrap();
        let key = sb.id.as_str();

        // The first line arrives while the command still sleeps.
        let script = "echo first; echo oops >&2; sleep 2; echo second; exit 3";
        let mut run = c
            .exec_stream(key, &argv(["sh", "-c", script]))
            .await
            .unwrap();
        assert!(run.pid() > 0);
        let began = Instant::now();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = loop {
            match run.next().await.unwrap() {
                Some(Output::Stdout(b)) => {
                    if out.is_empty() {
                        assert!(
                            began.elapsed() < Duration::from_millis(1500),
                            "the first line waited for the command's end"
                        );
                    }
                    out.extend_from_slice(&b);
                }
                Some(Output::Stderr(b)) => err.extend_from_slice(&b),
                Some(Output::Exit(e)) => break e,
                None => panic!("the stream ended without an exit"),
            }
        };
        assert_eq!(String::from_utf8_lossy(&out), "first\nsecond\n");
        assert_eq!(String::from_utf8_lossy(&err), "oops\n");
        assert_eq!(exit.exit_code, Some(3));
        assert!(run.next().await.unwrap().is_none());

        // Stdin, written and closed from beside the stream.
        let mut req = argv(["sh", "-c", "tr a-z A-Z"]);
        req.stdin = true;
        let run = c.exec_stream(key, &req).await.unwrap();
        run.write_stdin("hello, ").await.unwrap();
        run.write_stdin("sandbox\n").await.unwrap();
        run.close_stdin().await.unwrap();
        let (out, _, exit) = run.collect().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "HELLO, SANDBOX\n");
        assert!(exit.success());

        // Collected, with the exact bytes.
        let r = c
            .exec(key, &shell("printf 'a\\377b'; exit 5"))
            .await
            .unwrap();
        assert_eq!(r.exit_code, Some(5));
        assert_eq!(r.stdout_b64, "Yf9i");

        // A background process outlives its stream and is followed again, from the start.
        let mut bg = shell("echo early; sleep 0.5; echo late");
        bg.background = true;
        let started = c.exec_stream(key, &bg).await.unwrap();
        let pid = started.pid();
        drop(started);
        let (out, _, exit) = c
            .attach(key, pid, true)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out), "early\nlate\n");
        assert!(exit.success());

        // A terminal's size changes from beside its stream.
        let mut tty = shell("sleep 1; stty size");
        tty.tty = Some(WinSize { rows: 10, cols: 20 });
        let run = c.exec_stream(key, &tty).await.unwrap();
        run.handle().resize(40, 120).await.unwrap();
        let (out, _, _) = run.collect().await.unwrap();
        assert!(String::from_utf8_lossy(&out).contains("40 120"));

        // A process listed, and killed.
        let mut sleeper = c.exec_stream(key, &argv(["sleep", "300"])).await.unwrap();
        let listed = c.processes(key).await.unwrap();
        assert!(listed.iter().any(|p| p.pid == sleeper.pid()), "{listed:?}");
        c.kill(key, sleeper.pid(), 9).await.unwrap();
        match sleeper.next().await.unwrap() {
            Some(Output::Exit(e)) => assert_eq!((e.exit_code, e.signal), (None, Some(9))),
            other => panic!("{other:?}"),
        }

        // A command that cannot start is the daemon's refusal, with its code.
        let e = c
            .exec_stream(key, &argv(["/no/such/program"]))
            .await
            .unwrap_err();
        assert!(e.is(WireCode::CommandNotFound), "{e}");

        c.remove(key).await.unwrap();
    });
    d.finish();
}

#[test]
fn files_go_in_and_come_back_out() {
    let Some(bin) = can_run("files_go_in_and_come_back_out") else {
        return;
    };
    let d = Daemon::start(bin, false);
    let c = d.client();
    block_on(async {
        let sb = c.create(&CreateSandbox::default()).await.unwrap();
        let f = c.files(&sb.id);
        let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
        f.mkdir("/tmp/a/b").await.unwrap();
        f.write("/tmp/a/b/data.bin", data.clone(), Some(0o640))
            .await
            .unwrap();
        assert_eq!(f.read("/tmp/a/b/data.bin").await.unwrap(), data);

        let st = f.stat("/tmp/a/b/data.bin").await.unwrap();
        assert_eq!(st.size, data.len() as u64);
        assert_eq!(st.mode & 0o7777, 0o640);
        assert_eq!(st.file_type, FileType::File);

        let listed = f.list("/tmp/a", 2).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
        assert!(
            names.contains(&"b") && names.contains(&"data.bin"),
            "{names:?}"
        );

        f.rename("/tmp/a/b/data.bin", "/tmp/a/moved.bin")
            .await
            .unwrap();
        let e = f.read("/tmp/a/b/data.bin").await.unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert_eq!(e.wire_code(), Some(WireCode::FileNotFound));
        // The sandbox sees what the client wrote.
        let r = c
            .exec(&sb.id, &shell("wc -c < /tmp/a/moved.bin"))
            .await
            .unwrap();
        assert_eq!(r.stdout.trim(), "300000");

        let e = f.remove("/tmp/a", false).await.unwrap_err();
        assert!(e.code().is_some(), "{e}");
        f.remove("/tmp/a", true).await.unwrap();
        assert!(f.stat("/tmp/a").await.unwrap_err().is_not_found());
        c.remove(&sb.id).await.unwrap();
    });
    d.finish();
}

#[test]
fn a_terminal_echoes_what_is_typed_and_follows_resizes() {
    let Some(bin) = can_run("a_terminal_echoes_what_is_typed_and_follows_resizes") else {
        return;
    };
    let d = Daemon::start(bin, false);
    let c = d.client();
    block_on(async {
        let sb = c.create(&CreateSandbox::default()).await.unwrap();
        let opts = TerminalOptions {
            cmd: Some("read -r line; echo \"got:$line\"; stty size; exit 4".into()),
            ..TerminalOptions::default()
        };
        let mut term = c.terminal(&sb.id, &opts).await.unwrap();
        term.resize(33, 101).await.unwrap();
        term.write("ping\r").await.unwrap();
        let (screen, exit) = tokio::time::timeout(Duration::from_secs(30), term.wait())
            .await
            .expect("the terminal ends")
            .unwrap();
        let screen = String::from_utf8_lossy(&screen);
        // The terminal echoes the keys, then the command answers.
        assert!(screen.contains("ping"), "{screen:?}");
        assert!(screen.contains("got:ping"), "{screen:?}");
        assert!(screen.contains("33 101"), "{screen:?}");
        assert_eq!(exit.exit_code, Some(4));

        // A kept terminal names its process, which can be joined again.
        let opts = TerminalOptions {
            cmd: Some("cat".into()),
            keep: true,
            ..TerminalOptions::default()
        };
        let mut term = c.terminal(&sb.id, &opts).await.unwrap();
        let pid = match term.next().await.unwrap() {
            Some(TerminalEvent::Notice(Notice::Process { pid })) => pid,
            other => panic!("{other:?}"),
        };
        term.close().await.unwrap();
        drop(term);
        let join = TerminalOptions {
            pid: Some(pid),
            ..TerminalOptions::default()
        };
        let mut again = c.terminal(&sb.id, &join).await.unwrap();
        again.write("\x04").await.unwrap();
        let (_, exit) = tokio::time::timeout(Duration::from_secs(30), again.wait())
            .await
            .expect("cat ends at ^D")
            .unwrap();
        assert_eq!(exit.exit_code, Some(0));

        // A refused terminal is an API error before the upgrade.
        let bad = TerminalOptions {
            rows: 0,
            ..TerminalOptions::default()
        };
        let e = c.terminal(&sb.id, &bad).await.unwrap_err();
        assert!(e.is(WireCode::InvalidRequest), "{e}");
        c.remove(&sb.id).await.unwrap();
    });
    d.finish();
}

#[test]
fn the_lifecycle_pause_resume_stop_start_fork_snapshot_and_timeouts() {
    let Some(bin) = can_run("the_lifecycle_pause_resume_stop_start_fork_snapshot_and_timeouts")
    else {
        return;
    };
    let d = Daemon::start(bin, false);
    let c = d.client();
    block_on(async {
        let mut events = c.events().await.unwrap();
        let req = CreateSandbox {
            name: Some("lab".into()),
            labels: [("team".to_string(), "ml".to_string())].into(),
            ..CreateSandbox::default()
        };
        let sb = c.create(&req).await.unwrap();
        assert!(sb.access_token.is_some());
        c.exec(&sb.id, &shell("echo kept > /tmp/mark"))
            .await
            .unwrap();

        let paused = c.pause("lab").await.unwrap();
        assert_eq!(paused.state, SandboxState::Paused);
        let mut kinds = Vec::new();
        while !kinds.iter().any(|k| k == "paused") {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.next())
                .await
                .expect("an event")
                .unwrap()
                .expect("the stream goes on");
            assert_eq!(ev.sandbox, sb.id);
            kinds.push(ev.kind);
        }
        assert!(kinds.iter().any(|k| k == "created"), "{kinds:?}");
        drop(events);
        let filter = ListFilter {
            state: Some(SandboxState::Paused),
            ..ListFilter::default()
        };
        let listed = c.list(&filter).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, sb.id);
        let e = c.exec("lab", &shell("true")).await.unwrap_err();
        assert!(e.is(WireCode::InvalidState), "{e}");
        assert_eq!(c.resume("lab").await.unwrap().state, SandboxState::Running);
        let r = c.exec("lab", &shell("cat /tmp/mark")).await.unwrap();
        assert_eq!(r.stdout, "kept\n");

        assert_eq!(c.stop(&sb.id).await.unwrap().state, SandboxState::Stopped);
        assert_eq!(c.start(&sb.id).await.unwrap().state, SandboxState::Running);

        let timed = c
            .set_timeout(
                &sb.id,
                &SetTimeout {
                    timeout_secs: Some(3600),
                    ..SetTimeout::default()
                },
            )
            .await
            .unwrap();
        assert!(timed.expires_at.is_some());
        let labelled = ListFilter {
            labels: [("team".to_string(), "ml".to_string())].into(),
            ..ListFilter::default()
        };
        assert_eq!(c.list(&labelled).await.unwrap().len(), 1);
        assert_eq!(c.get("lab").await.unwrap().id, sb.id);
        // Readings come every few seconds; what matters is that the route answers.
        c.usage(&sb.id, None, None).await.unwrap();

        let copies = c.fork(&sb.id, 1).await.unwrap();
        assert_eq!(copies.len(), 1);
        let r = c
            .exec(&copies[0].id, &shell("cat /tmp/mark"))
            .await
            .unwrap();
        assert_eq!(r.stdout, "kept\n");
        c.remove(&copies[0].id).await.unwrap();

        let snap = c
            .snapshot(
                &sb.id,
                &SnapshotRequest {
                    name: "marked".into(),
                    memory: false,
                },
            )
            .await
            .unwrap();
        assert_eq!(snap.template.name, "marked");
        let templates = c.templates().await.unwrap();
        assert!(
            templates.iter().any(|t| t.name == "marked"),
            "{templates:?}"
        );

        let history = c.logs("lab").await.unwrap();
        let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
        for kind in ["created", "paused", "resumed", "stopped", "started"] {
            assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
        }
        c.remove("lab").await.unwrap();
        assert!(c.get(&sb.id).await.unwrap_err().is_not_found());
    });
    d.finish();
}

#[test]
fn a_session_is_acquired_kept_alive_and_released() {
    let Some(bin) = can_run("a_session_is_acquired_kept_alive_and_released") else {
        return;
    };
    let d = Daemon::start(bin, false);
    let c = d.client();
    block_on(async {
        let req = OpenSession {
            client: "agent-7".into(),
            ..OpenSession::default()
        };
        let lease = c.acquire(&req, Duration::from_millis(200)).await.unwrap();
        let sandbox = lease.sandbox().to_string();
        let first_seen = lease.info().last_seen_at.clone();
        c.exec(&sandbox, &shell("echo warm > /tmp/state"))
            .await
            .unwrap();
        // Heartbeats go on by themselves.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let seen = c.session(lease.id()).await.unwrap();
        assert!(seen.last_seen_at >= first_seen);
        assert_eq!(c.sessions().await.unwrap().len(), 1);

        // Kept alive: the next session of the same client gets the same, warm sandbox.
        lease.release(true).await.unwrap();
        assert_eq!(c.get(&sandbox).await.unwrap().state, SandboxState::Running);
        let lease = c.acquire(&req, Duration::from_secs(60)).await.unwrap();
        assert_eq!(lease.sandbox(), sandbox);
        let r = c.exec(&sandbox, &shell("cat /tmp/state")).await.unwrap();
        assert_eq!(r.stdout, "warm\n");

        let detached = c.detach_session(lease.id()).await.unwrap();
        assert_eq!(
            serde_json::to_value(detached.state).unwrap(),
            serde_json::json!("detached")
        );
        c.heartbeat(lease.id()).await.unwrap();
        // Released for good: the sandbox goes.
        lease.release(false).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.get(&sandbox).await {
                Err(e) if e.is_not_found() => break,
                Ok(s) if s.state == SandboxState::Terminated => break,
                _ => {}
            }
            assert!(Instant::now() < deadline, "the released sandbox stays");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    d.finish();
}

#[test]
fn api_errors_carry_the_daemons_code_and_message() {
    let Some(bin) = can_run("api_errors_carry_the_daemons_code_and_message") else {
        return;
    };
    let d = Daemon::start(bin, false);
    let c = d.client();
    block_on(async {
        let health = c.health().await.unwrap();
        assert_eq!(health.status, "ok");
        let backends = c.backends().await.unwrap();
        assert!(backends.iter().any(|b| b.available), "{backends:?}");

        match c.get("no-such-sandbox").await.unwrap_err() {
            Error::Api { code, message } => {
                assert_eq!(code, "not_found");
                assert!(message.contains("no-such-sandbox"), "{message}");
            }
            e => panic!("{e}"),
        }
        let named = CreateSandbox {
            name: Some("once".into()),
            ..CreateSandbox::default()
        };
        c.create(&named).await.unwrap();
        let e = c.create(&named).await.unwrap_err();
        assert_eq!(e.wire_code(), Some(WireCode::NameTaken), "{e}");
        assert!(e.to_string().ends_with("(name_taken)"), "{e}");
        // Another tenant sees none of it.
        let other = c.clone().with_tenant("someone-else");
        assert!(other.get("once").await.unwrap_err().is_not_found());
        c.remove("once").await.unwrap();

        // No daemon there at all.
        let nowhere = warren_client::Client::unix(d.dir().join("nothing.sock"));
        assert!(matches!(
            nowhere.health().await.unwrap_err(),
            Error::Connect { .. }
        ));
    });
    d.finish();
}

#[test]
fn tcp_takes_the_key_and_refuses_a_wrong_one() {
    let Some(bin) = can_run("tcp_takes_the_key_and_refuses_a_wrong_one") else {
        return;
    };
    let d = Daemon::start(bin, true);
    let key = d.api_key();
    block_on(async {
        let good = d.tcp_client(Some(&key));
        assert!(good.over_tcp());
        let sb = good.create(&CreateSandbox::default()).await.unwrap();
        let r = good.exec(&sb.id, &shell("echo over tcp")).await.unwrap();
        assert_eq!(r.stdout, "over tcp\n");
        let mut term = good
            .terminal(
                &sb.id,
                &TerminalOptions {
                    cmd: Some("echo tty".into()),
                    ..TerminalOptions::default()
                },
            )
            .await
            .unwrap();
        let (screen, _) = term.wait().await.unwrap();
        assert!(String::from_utf8_lossy(&screen).contains("tty"));

        // The sandbox's access token reaches that sandbox alone.
        let token = sb.access_token.clone().expect("an access token");
        let scoped = d.tcp_client(None).with_access_token(token);
        let r = scoped.exec(&sb.id, &shell("echo scoped")).await.unwrap();
        assert_eq!(r.stdout, "scoped\n");
        assert!(scoped.list(&ListFilter::default()).await.is_err());

        let wrong = d.tcp_client(Some("wk_not-a-key"));
        let e = wrong.list(&ListFilter::default()).await.unwrap_err();
        assert!(e.is(WireCode::Unauthorized), "{e}");
        let e = wrong.exec(&sb.id, &shell("true")).await.unwrap_err();
        assert!(e.is(WireCode::Unauthorized), "{e}");
        let none = d.tcp_client(None);
        let e = none.list(&ListFilter::default()).await.unwrap_err();
        assert!(e.is(WireCode::Unauthorized), "{e}");
        assert!(e.to_string().contains("WARREN_API_KEY"), "{e}");
        // /health needs no key.
        none.health().await.unwrap();
        good.remove(&sb.id).await.unwrap();
    });
    d.finish();
}

#[test]
fn keys_are_listed_and_revoked() {
    let Some(bin) = can_run("keys_are_listed_and_revoked") else {
        return;
    };
    let d = Daemon::start(bin, true);
    let kept = d.api_key();
    let o = d
        .warren(&["keys", "create", "--tenant", "default"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let doomed = String::from_utf8(o.stdout).unwrap().trim().to_string();
    block_on(async {
        let good = d.tcp_client(Some(&kept));
        let keys = good.keys().await.unwrap();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(keys.iter().all(|k| k.tenant == "default"));
        assert_eq!(d.client().keys().await.unwrap(), keys);
        // The newer is the second made.
        let id = &keys.iter().max_by_key(|k| k.created_at).unwrap().id;
        let gone = d.tcp_client(Some(&doomed));
        // Streams opened with the key before: a terminal and an exec's output.
        let sb = good.create(&CreateSandbox::default()).await.unwrap();
        let mut term = gone
            .terminal(
                &sb.id,
                &TerminalOptions {
                    cmd: Some("echo ready; sleep 600".into()),
                    ..TerminalOptions::default()
                },
            )
            .await
            .unwrap();
        let mut stream = gone
            .exec_stream(&sb.id, &shell("echo ready; sleep 600"))
            .await
            .unwrap();
        assert!(matches!(
            stream.next().await.unwrap(),
            Some(Output::Stdout(_))
        ));
        let mut events = gone.events().await.unwrap();
        good.revoke_key(id).await.unwrap();
        let e = gone.keys().await.unwrap_err();
        assert!(e.is(WireCode::Unauthorized), "{e}");
        let revoked = |e: &Error| e.is(WireCode::Unauthorized) && e.to_string().contains("revoked");
        let e = tokio::time::timeout(Duration::from_secs(30), term.wait())
            .await
            .expect("the terminal ends")
            .unwrap_err();
        assert!(revoked(&e), "{e}");
        let e = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.next().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the stream ends")
        .unwrap_err();
        assert!(revoked(&e), "{e}");
        // The event stream ends.
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(_)) = events.next().await {}
        })
        .await
        .expect("the event stream ends");
        good.remove(&sb.id).await.unwrap();
        assert_eq!(good.keys().await.unwrap().len(), 1);
        let e = good.revoke_key(id).await.unwrap_err();
        assert!(e.is(WireCode::NotFound), "{e}");
    });
    d.finish();
}
