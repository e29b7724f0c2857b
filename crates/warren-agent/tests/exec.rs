//! Processes over the protocol: output, exit, stdin, timeouts, terminals, credit,
//! background processes and bad input.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{argv, sh, TestAgent};
use warren_agent::AgentConfig;
use warren_types::proto::{
    frame_credit, ErrorCode, ExecRequest, Frame, FrameKind, Request, Response, WinSize, CHUNK,
    INITIAL_WINDOW, INPUT_WINDOW, MIN_FRAME_CREDIT, OLDEST_PROTOCOL_VERSION,
};

#[tokio::test]
async fn exit_code_and_separate_streams() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let out = c.run(sh("echo out; echo err >&2; exit 3")).await;
    assert_eq!(out.stdout(), "out\n");
    assert_eq!(out.stderr(), "err\n");
    assert_eq!(
        (out.status.code, out.status.signal, out.status.timed_out),
        (Some(3), None, false)
    );

    let out = c.run(argv(&["echo", "a b", "c"])).await;
    assert_eq!(out.stdout(), "a b c\n");
    assert_eq!(out.status.code, Some(0));
}

#[tokio::test]
async fn death_by_signal_is_reported_as_such() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let out = c.run(sh("kill -TERM $$")).await;
    assert_eq!((out.status.code, out.status.signal), (None, Some(15)));
    assert_eq!(out.status.shell_code(), 143);
}

#[tokio::test]
async fn unknown_command_is_an_error_not_a_crash() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    match c
        .request(&Request::Exec(argv(&["no-such-command-here"])))
        .await
    {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::CommandNotFound);
            assert!(message.contains("no-such-command-here"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match c.request(&Request::Exec(ExecRequest::default())).await {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
    let mut missing_cwd = argv(&["true"]);
    missing_cwd.cwd = Some("/no/such/dir".into());
    match c.request(&Request::Exec(missing_cwd)).await {
        Response::Error { code, .. } => assert_eq!(code, ErrorCode::NotFound),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.run(sh("exit 0")).await.status.code, Some(0));
}

#[tokio::test]
async fn env_merges_and_cwd_applies() {
    let env = BTreeMap::from([
        ("BASE".to_string(), "base".to_string()),
        ("OVER".to_string(), "base".to_string()),
        ("PATH".to_string(), "/usr/bin:/bin".to_string()),
    ]);
    let agent = TestAgent::start_with(AgentConfig {
        env,
        ..Default::default()
    });
    let dir = agent.scratch();
    let mut c = agent.connect().await;
    let mut req = sh("echo $BASE $OVER $OWN; pwd; echo $TERM");
    req.env = BTreeMap::from([
        ("OVER".to_string(), "request".to_string()),
        ("OWN".to_string(), "own".to_string()),
    ]);
    req.cwd = Some(dir.display().to_string());
    let out = c.run(req).await;
    assert_eq!(
        out.stdout(),
        format!("base request own\n{}\n\n", dir.display())
    );
}

#[tokio::test]
async fn stdin_round_trips() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let mut req = argv(&["cat"]);
    req.stdin = true;
    let (ch, _) = c.exec(req).await;
    c.send_frame(&Frame::new(ch, FrameKind::Stdin, b"hello ".to_vec()))
        .await;
    c.send_frame(&Frame::new(ch, FrameKind::Stdin, b"world\n".to_vec()))
        .await;
    assert_eq!(c.read_until(ch, "world\n").await, "hello world\n");
    c.send(ch, &Request::CloseStdin).await;
    let out = c.outcome(ch).await;
    assert_eq!(out.status.code, Some(0));
}

#[tokio::test]
async fn stdin_credit_comes_back_as_the_process_reads() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let mut req = sh("sleep 2; wc -c");
    req.stdin = true;
    let (ch, _) = c.exec(req).await;
    // While the process reads nothing, the agent takes what the pipe buffers and the
    // window, no more.
    let mut sent = 0;
    loop {
        while c.input_left(ch) >= CHUNK {
            c.send_input(ch, FrameKind::Stdin, vec![7; CHUNK]).await;
            sent += CHUNK;
        }
        if !c.poll_credit(Duration::from_millis(300)).await {
            break;
        }
    }
    assert!(
        (INPUT_WINDOW as usize..=INPUT_WINDOW as usize + (1 << 20)).contains(&sent),
        "{sent} bytes taken before the process read any"
    );
    // Then it reads, and 4 MiB go through the window as it gives credit back.
    let total = 4 << 20;
    while sent < total {
        c.send_input(ch, FrameKind::Stdin, vec![7; CHUNK]).await;
        sent += CHUNK;
    }
    c.send(ch, &Request::CloseStdin).await;
    let out = c.outcome(ch).await;
    assert_eq!(out.stdout().trim(), total.to_string(), "{}", out.stderr());
    assert_eq!(
        c.input_left(ch),
        INPUT_WINDOW as usize,
        "written input kept its credit"
    );
}

#[tokio::test]
async fn stdin_beyond_its_credit_is_refused_on_that_channel_only() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let mut req = argv(&["sleep", "1000"]);
    req.stdin = true;
    let (ch, pid) = c.exec(req).await;
    // A client that ignores its credit: the window's worth is held for the process
    // (which reads nothing) beyond what its pipe buffers, and a frame past that is
    // refused on its channel, once.
    for _ in 0..(4 << 20) / CHUNK {
        c.send_frame(&Frame::new(ch, FrameKind::Stdin, vec![b'x'; CHUNK]))
            .await;
    }
    match c.control(ch).await {
        Response::Error {
            code: ErrorCode::BadRequest,
            message,
        } => assert!(message.contains("credit"), "{message}"),
        other => panic!("overrun answered {other:?}"),
    }
    // Its later input is dropped without another word, and the connection carries on.
    c.send_frame(&Frame::new(ch, FrameKind::Stdin, b"more".to_vec()))
        .await;
    assert_eq!(c.run(sh("echo alive")).await.stdout(), "alive\n");
    let stat = Request::Stat {
        path: "/".into(),
        user: None,
    };
    assert!(matches!(c.request(&stat).await, Response::FileInfo { .. }));
    let kill = Request::Signal {
        pid,
        signal: 9,
        group: false,
    };
    assert_eq!(c.request(&kill).await, Response::Ok);
    assert_eq!(c.outcome(ch).await.status.signal, Some(9));
}

#[tokio::test]
async fn timeout_kills_the_whole_group() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let mut req = sh("sleep 100 & echo $!; sleep 100");
    req.timeout_ms = Some(300);
    let started = Instant::now();
    let (ch, _) = c.exec(req).await;
    let out = c.outcome(ch).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.status.timed_out);
    assert_eq!(out.status.signal, Some(9));
    // The background sleep was in the group: it is gone (or a zombie awaiting its reaper).
    let bg: u32 = out.stdout().trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background child {bg} survived: {stat}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn many_channels_run_concurrently() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let mut chans = Vec::new();
    for i in 0..6 {
        chans.push((i, c.exec(sh(&format!("sleep 1; echo {i}"))).await.0));
    }
    let started = Instant::now();
    for (i, ch) in chans {
        assert_eq!(c.outcome(ch).await.stdout(), format!("{i}\n"));
    }
    assert!(
        // One after another would take 6 s; together, about 1.
        started.elapsed() < Duration::from_secs(4),
        "ran one after another"
    );
}

#[tokio::test]
async fn background_process_survives_disconnect_and_replays() {
    let agent = TestAgent::start();
    let mut a = agent.connect().await;
    let mut req = sh("echo first; sleep 0.3; echo second; exec sleep 100");
    req.background = true;
    req.tag = Some("bg".into());
    let (ch, pid) = a.exec(req).await;
    a.read_until(ch, "first").await;
    drop(a);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut b = agent.connect().await;
    match b.request(&Request::ListProcesses).await {
        Response::Processes { list } => {
            let p = list.iter().find(|p| p.pid == pid).expect("listed");
            assert!(p.background && p.exit.is_none());
            assert_eq!(p.tag.as_deref(), Some("bg"));
        }
        other => panic!("{other:?}"),
    }
    let attach = b
        .open(&Request::Attach {
            pid,
            replay: true,
            from: None,
            serial: None,
        })
        .await;
    assert_eq!(b.read_until(attach, "second\n").await, "first\nsecond\n");
    assert_eq!(
        b.request(&Request::Signal {
            pid,
            signal: 9,
            group: false,
        })
        .await,
        Response::Ok
    );
    let out = b.outcome(attach).await;
    assert_eq!(out.status.signal, Some(9));
    // Kept once ended, output and exit, to be read again.
    match b.request(&Request::ListProcesses).await {
        Response::Processes { list } => {
            let p = list.iter().find(|p| p.pid == pid).expect("still listed");
            assert_eq!(p.exit.as_ref().and_then(|e| e.signal), Some(9));
        }
        other => panic!("{other:?}"),
    }
    let again = b
        .open(&Request::Attach {
            pid,
            replay: true,
            from: None,
            serial: None,
        })
        .await;
    assert_eq!(b.read_until(again, "second\n").await, "first\nsecond\n");
}

#[tokio::test]
async fn foreground_process_dies_with_its_connection() {
    let agent = TestAgent::start();
    let mut a = agent.connect().await;
    let (_, pid) = a.exec(argv(&["sleep", "100"])).await;
    drop(a);
    let mut b = agent.connect().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Response::Processes { list } = b.request(&Request::ListProcesses).await else {
            panic!("no list")
        };
        let p = list
            .iter()
            .find(|p| p.pid == pid)
            .expect("ended processes stay listed");
        if let Some(exit) = p.exit {
            assert_eq!(exit.signal, Some(9));
            break;
        }
        assert!(Instant::now() < deadline, "sleep survived its client");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Attaching to an ended process replays it and reports its end.
    let attach = b
        .open(&Request::Attach {
            pid,
            replay: true,
            from: None,
            serial: None,
        })
        .await;
    assert_eq!(b.outcome(attach).await.status.signal, Some(9));
}

/// The exit of `pid` as the agent lists it, once it has ended (within 5 s).
async fn ended(c: &mut common::Client, pid: u32) -> warren_types::proto::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Response::Processes { list } = c.request(&Request::ListProcesses).await else {
            panic!("no list")
        };
        let p = list.iter().find(|p| p.pid == pid).expect("listed");
        if let Some(exit) = p.exit {
            return exit;
        }
        assert!(Instant::now() < deadline, "process {pid} is still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_closed_channel_ends_its_foreground_process_and_the_connection_goes_on() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let (fg, fg_pid) = c.exec(sh("sleep 100 & exec sleep 100")).await;
    let mut bg_req = argv(&["sleep", "100"]);
    bg_req.background = true;
    let (bg, bg_pid) = c.exec(bg_req).await;
    let (watching, watched_pid) = c.exec(argv(&["sleep", "100"])).await;

    // Closing is not answered: the next frame is the list asked for after it.
    c.send(fg, &Request::Close).await;
    assert_eq!(ended(&mut c, fg_pid).await.signal, Some(9));
    // A background process keeps running when its channel closes.
    c.send(bg, &Request::Close).await;
    // Closing an unknown channel, and one closed already, is not answered either.
    c.send(999, &Request::Close).await;
    c.send(fg, &Request::Close).await;
    let Response::Processes { list } = c.request(&Request::ListProcesses).await else {
        panic!("no list")
    };
    let running = |pid: u32| list.iter().any(|p| p.pid == pid && p.exit.is_none());
    assert!(
        running(bg_pid),
        "the background process died with its channel"
    );
    assert!(running(watched_pid), "another channel's process died");

    // The connection still carries new work, and the other channel's process goes on
    // until it is signalled.
    let (echo, _) = c.exec(sh("echo still here")).await;
    assert_eq!(c.outcome(echo).await.stdout(), "still here\n");
    for pid in [watched_pid, bg_pid] {
        let kill = Request::Signal {
            pid,
            signal: 9,
            group: false,
        };
        assert!(matches!(c.request(&kill).await, Response::Ok));
    }
    assert_eq!(c.outcome(watching).await.status.signal, Some(9));
    assert_eq!(ended(&mut c, bg_pid).await.signal, Some(9));
    // Nothing came on the closed channels, not even the foreground process's exit.
    while c.poll_credit(Duration::from_millis(200)).await {}
    assert_eq!(c.pending_on(999), 0);
    assert_eq!(c.pending_on(fg), 0);
}

#[tokio::test]
async fn signals_and_resizes_need_a_known_process() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let not_found = |r: Response| {
        matches!(
            r,
            Response::Error {
                code: ErrorCode::ProcessNotFound,
                ..
            }
        )
    };
    assert!(not_found(
        c.request(&Request::Signal {
            pid: 1,
            signal: 9,
            group: false,
        })
        .await
    ));
    assert!(not_found(
        c.request(&Request::Attach {
            pid: 1,
            replay: false,
            from: None,
            serial: None
        })
        .await
    ));
    let size = WinSize { rows: 1, cols: 1 };
    assert!(not_found(
        c.request(&Request::Resize { pid: 1, size }).await
    ));
    let (ch, pid) = c.exec(argv(&["sleep", "100"])).await;
    assert!(matches!(
        c.request(&Request::Signal {
            pid,
            signal: 12345,
            group: false,
        })
        .await,
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert_eq!(
        c.request(&Request::Signal {
            pid,
            signal: 15,
            group: false,
        })
        .await,
        Response::Ok
    );
    assert_eq!(c.outcome(ch).await.status.signal, Some(15));
}

#[tokio::test]
async fn terminal_reports_and_follows_its_size() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let mut req = sh("stty size; echo $TERM; test -t 0 && echo tty; read line; stty size");
    req.tty = Some(WinSize { rows: 24, cols: 80 });
    let (ch, pid) = c.exec(req).await;
    let first = c.read_until(ch, "tty").await;
    assert!(first.contains("24 80"), "{first:?}");
    assert!(first.contains("xterm-256color"), "{first:?}");
    let size = WinSize {
        rows: 30,
        cols: 100,
    };
    assert_eq!(
        c.request(&Request::Resize { pid, size }).await,
        Response::Ok
    );
    c.send_frame(&Frame::new(ch, FrameKind::Stdin, b"\n".to_vec()))
        .await;
    let out = c.outcome(ch).await;
    assert!(out.stdout().contains("30 100"), "{:?}", out.stdout());
    assert!(out.stderr.is_empty());
    assert_eq!(out.status.code, Some(0));
}

#[tokio::test]
async fn output_never_exceeds_granted_credit() {
    const TOTAL: usize = 5_000_000;
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let (ch, _) = c
        .exec(argv(&["head", "-c", &TOTAL.to_string(), "/dev/zero"]))
        .await;
    let mut granted = INITIAL_WINDOW as usize;
    let mut received = 0usize;
    // What the frames cost: their length, but at least MIN_FRAME_CREDIT each.
    let mut charged = 0usize;
    let mut grants = 0;
    loop {
        // Once the window cannot pay for another frame, nothing may come until we grant.
        if granted - charged < MIN_FRAME_CREDIT {
            let quiet = tokio::time::timeout(Duration::from_millis(200), c.frame(ch)).await;
            assert!(quiet.is_err(), "agent sent past its credit: {quiet:?}");
            let more = 700_000;
            c.grant(ch, more as u32).await;
            granted += more;
            grants += 1;
        }
        let f = c.frame(ch).await;
        match f.kind {
            FrameKind::Stdout => {
                received += f.payload.len();
                charged += frame_credit(f.payload.len());
                assert!(
                    charged <= granted,
                    "received {received} ({charged} of credit) with {granted} granted"
                );
            }
            FrameKind::Control => {
                assert!(
                    matches!(f.parse().unwrap(), Response::Exited { status } if status.code == Some(0))
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, TOTAL);
    assert!(grants >= 5);
}

#[tokio::test]
async fn a_client_behind_the_process_takes_its_output_in_larger_frames() {
    const TOTAL: usize = 3_000_000;
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let (ch, _) = c
        .exec(argv(&["head", "-c", &TOTAL.to_string(), "/dev/zero"]))
        .await;
    // The first window's worth and no grant: the process writes on into the history
    // while the client is behind.
    let mut received = 0usize;
    let mut charged = 0usize;
    while INITIAL_WINDOW as usize - charged >= MIN_FRAME_CREDIT {
        let f = c.frame(ch).await;
        assert_eq!(f.kind, FrameKind::Stdout, "{f:?}");
        assert!(f.payload.len() <= 4 * CHUNK, "{} bytes", f.payload.len());
        received += f.payload.len();
        charged += frame_credit(f.payload.len());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.grant(ch, charged as u32).await;
    let mut largest = 0;
    loop {
        let f = c.frame(ch).await;
        match f.kind {
            FrameKind::Stdout => {
                largest = largest.max(f.payload.len());
                assert!(f.payload.len() <= 4 * CHUNK, "{} bytes", f.payload.len());
                received += f.payload.len();
                c.grant(ch, frame_credit(f.payload.len()) as u32).await;
            }
            FrameKind::Control => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, TOTAL);
    assert!(
        largest > CHUNK,
        "what waited in the history came in frames of at most {largest} bytes"
    );
}

#[tokio::test]
async fn processes_run_confined_as_their_user() {
    if !warren_testkit::needs_root("processes_run_confined_as_their_user", "switching users") {
        return;
    }
    let seccomp = warren_sys::seccomp::SeccompProgram::default_policy().unwrap();
    let agent = TestAgent::start_with(AgentConfig {
        seccomp: Some(std::sync::Arc::new(seccomp)),
        drop_caps: true,
        ..Default::default()
    });
    let mut c = agent.connect().await;
    let out = c
        .run(sh("grep -E '^(CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; unshare -U true 2>&1; id -u"))
        .await;
    let text = out.stdout();
    assert!(
        text.contains(&format!("CapBnd:\t{:016x}", warren_sys::caps::KEPT_MASK)),
        "{text}"
    );
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(text.ends_with("0\n"), "{text}");

    // "nobody" has a home that does not exist: the working directory falls back to "/".
    let mut req = sh("id -u; id -g; pwd");
    req.user = Some(warren_types::proto::User::Name("nobody".into()));
    assert_eq!(c.run(req).await.stdout(), "65534\n65534\n/\n");
    let mut req = argv(&["id", "-u"]);
    req.user = Some(warren_types::proto::User::Id {
        uid: 4321,
        gid: Some(4321),
    });
    assert_eq!(c.run(req).await.stdout(), "4321\n");
}

#[tokio::test]
async fn detached_flood_keeps_memory_bounded() {
    let agent = TestAgent::start();
    let mut a = agent.connect().await;
    let mut req = argv(&["yes", "flood"]);
    req.background = true;
    let (_, pid) = a.exec(req).await;
    drop(a);
    let rss = || {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_string();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let before = rss();
    // With nobody attached the ring forgets the oldest output; gigabytes pass through.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let grown = rss().saturating_sub(before);
    assert!(grown < 32 * 1024, "agent grew by {grown} KiB");

    let mut b = agent.connect().await;
    let attach = b
        .open(&Request::Attach {
            pid,
            replay: true,
            from: None,
            serial: None,
        })
        .await;
    assert!(b
        .read_until(attach, "flood\nflood\n")
        .await
        .contains("flood"));
    assert_eq!(
        b.request(&Request::Signal {
            pid,
            signal: 9,
            group: false,
        })
        .await,
        Response::Ok
    );
    assert_eq!(b.outcome(attach).await.status.signal, Some(9));
}

#[tokio::test]
async fn bad_requests_get_errors_and_the_connection_lives_on() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    for payload in [
        &b"{not json"[..],
        br#"{"op":"no_such_op"}"#,
        br#"{"op":"stat","path":"/","x":1}"#,
    ] {
        let ch = c.channel();
        c.send_frame(&Frame::new(ch, FrameKind::Control, payload.to_vec()))
            .await;
        assert!(matches!(
            c.control(ch).await,
            Response::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
    }
    let ch = c.channel();
    c.send_frame(&Frame::new(ch, FrameKind::Stdout, b"x".to_vec()))
        .await;
    assert!(matches!(
        c.control(ch).await,
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    c.send_frame(&Frame::new(ch, FrameKind::Credit, vec![1, 2]))
        .await;
    assert!(matches!(
        c.control(ch).await,
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert_eq!(c.run(sh("echo alive")).await.stdout(), "alive\n");
}

#[tokio::test]
async fn handshake_and_framing_errors_close_only_that_connection() {
    let agent = TestAgent::start();

    let mut future = agent.connect_raw().await;
    future.send(0, &Request::Hello { version: 999 }).await;
    assert!(matches!(
        future.control(0).await,
        Response::Error {
            code: ErrorCode::VersionMismatch,
            ..
        }
    ));
    assert!(future.next_frame().await.is_none());
    // A client of the version before input credit is refused too, saying so: it
    // would send stdin unbounded, which this agent no longer absorbs.
    let mut old = agent.connect_raw().await;
    old.send(
        0,
        &Request::Hello {
            version: OLDEST_PROTOCOL_VERSION,
        },
    )
    .await;
    match old.control(0).await {
        Response::Error {
            code: ErrorCode::VersionMismatch,
            message,
        } => assert!(message.contains("version 3, client 1"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(old.next_frame().await.is_none());

    let mut rude = agent.connect_raw().await;
    rude.send(1, &Request::ListProcesses).await;
    assert!(matches!(
        rude.control(0).await,
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(rude.next_frame().await.is_none());

    let mut broken = agent.connect().await;
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0, 0, 0, 1, 99, 0]);
    tokio::io::AsyncWriteExt::write_all(&mut broken.wr, &garbage)
        .await
        .unwrap();
    assert!(matches!(
        broken.control(0).await,
        Response::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(broken.next_frame().await.is_none());

    let mut fine = agent.connect().await;
    assert_eq!(fine.run(sh("echo ok")).await.stdout(), "ok\n");
}

/// Starts `req` in the background, returning its channel, pid and serial.
async fn start_background(c: &mut common::Client, mut req: ExecRequest) -> (u32, u32, u64) {
    req.background = true;
    let ch = c.open(&Request::Exec(req)).await;
    match c.control(ch).await {
        Response::Started { pid, serial } => (ch, pid, serial),
        other => panic!("exec answered {other:?}"),
    }
}

async fn listed(c: &mut common::Client, pid: u32) -> warren_types::proto::ProcessInfo {
    match c.request(&Request::ListProcesses).await {
        Response::Processes { list } => list.into_iter().find(|p| p.pid == pid).expect("listed"),
        other => panic!("{other:?}"),
    }
}

fn attach(pid: u32, from: Option<u64>, serial: Option<u64>) -> Request {
    Request::Attach {
        pid,
        replay: false,
        from,
        serial,
    }
}

#[tokio::test]
async fn serials_tell_processes_apart_and_attach_checks_them() {
    let agent = TestAgent::start();
    let mut c = agent.connect().await;
    let (ch_a, a, serial_a) =
        start_background(&mut c, sh("printf 0123456789; exec sleep 100")).await;
    let (_, b, serial_b) = start_background(&mut c, sh("exec sleep 100")).await;
    assert_eq!(serial_a, 1, "serials start at 1");
    assert_eq!(serial_b, serial_a + 1);
    c.read_until(ch_a, "9").await;
    let info = listed(&mut c, a).await;
    assert_eq!((info.serial, info.output_end), (serial_a, 10));
    assert_eq!(listed(&mut c, b).await.serial, serial_b);

    // A serial that is not the pid's is a process that is gone.
    match c.request(&attach(a, None, Some(serial_b))).await {
        Response::Error { code, message } => {
            assert_eq!(code, ErrorCode::ProcessNotFound);
            assert!(message.contains(&serial_b.to_string()), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let ch = c.open(&attach(a, Some(0), Some(serial_a))).await;
    assert_eq!(c.read_until(ch, "9").await, "0123456789");

    // Serials are not reused once a process is collected.
    for pid in [a, b] {
        c.request(&Request::Signal {
            pid,
            signal: 9,
            group: false,
        })
        .await;
    }
    c.outcome(ch).await;
    let (_, _, serial_c) = start_background(&mut c, sh("true")).await;
    assert_eq!(serial_c, serial_b + 1);
}

#[tokio::test]
async fn attach_resumes_from_an_output_offset() {
    let agent = TestAgent::start_with(AgentConfig {
        ring_size: 0, // the least the ring takes: about 128 KiB
        ..AgentConfig::default()
    });
    let mut c = agent.connect().await;
    let (ch, pid, _) = start_background(&mut c, sh("printf 0123456789; exec sleep 100")).await;
    c.read_until(ch, "9").await;

    let from_four = c.open(&attach(pid, Some(4), None)).await;
    assert_eq!(c.read_until(from_four, "9").await, "456789");
    // `from` wins over `replay`.
    let ch = c
        .open(&Request::Attach {
            pid,
            replay: true,
            from: Some(8),
            serial: None,
        })
        .await;
    assert_eq!(c.read_until(ch, "9").await, "89");
    // Past the end: only what comes next, here nothing but the end.
    let past = c.open(&attach(pid, Some(1 << 40), None)).await;
    c.request(&Request::Signal {
        pid,
        signal: 9,
        group: false,
    })
    .await;
    let out = c.outcome(past).await;
    assert_eq!((out.stdout(), out.status.signal), (String::new(), Some(9)));

    // Evicted output: the replay starts at the oldest byte kept.
    let full: String = (1..=60_000).map(|i| format!("{i}\n")).collect();
    let (ch, pid, _) = start_background(&mut c, sh("seq 1 60000; exec sleep 100")).await;
    // Without a reader the ring forgets the oldest output.
    c.send(ch, &Request::Cancel).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while listed(&mut c, pid).await.output_end < full.len() as u64 {
        assert!(Instant::now() < deadline, "seq did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ch = c.open(&attach(pid, Some(0), None)).await;
    let kept = c.read_until(ch, "\n60000\n").await;
    assert!(kept.len() < full.len(), "nothing was evicted");
    assert!(full.ends_with(&kept), "the replay is not the newest output");
    c.request(&Request::Signal {
        pid,
        signal: 9,
        group: false,
    })
    .await;
}
