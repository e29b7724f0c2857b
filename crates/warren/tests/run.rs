//! `warren run` as a user sees it: output, exit status, stdin, terminals, timeouts.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn runs_python_and_streams_stdout_and_stderr_apart() {
    if !can_run("runs_python_and_streams_stdout_and_stderr_apart") {
        return;
    }
    let o = warren()
        .args(["run", "--rm", "--", "python3", "-c"])
        .arg("import sys; print('hello from a sandbox'); print('oops', file=sys.stderr)")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(stdout(&o), "hello from a sandbox\n");
    assert_eq!(stderr(&o), "oops\n");
}

#[test]
fn exit_status_is_the_commands_own() {
    if !can_run("exit_status_is_the_commands_own") {
        return;
    }
    assert_eq!(sh(&[], "exit 42").status.code(), Some(42));
    assert_eq!(sh(&[], "kill -TERM $$").status.code(), Some(143));
    assert_eq!(sh(&[], "kill -KILL $$").status.code(), Some(137));
}

#[test]
fn its_output_ends_when_it_exits_not_after_the_teardown() {
    // `$(warren run ...)` and a pipe wait until every holder of the CLI's stdout and
    // stderr has closed them: the sandbox's helper, forked from the CLI, must not hold
    // them through the teardown it finishes after the CLI has gone.
    if !can_run("its_output_ends_when_it_exits_not_after_the_teardown") {
        return;
    }
    use std::os::fd::AsRawFd;
    for _ in 0..3 {
        let mut child = warren()
            .args(["run", "--rm", "--", "sh", "-c", "echo out; echo err >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        assert!(child.wait().unwrap().success());
        // Right after the CLI's exit: whatever is buffered, then the end, never "nothing
        // yet" (which would mean another process still holds the pipe).
        for (name, fd, want) in [
            ("stdout", out.as_raw_fd(), "out\n"),
            ("stderr", err.as_raw_fd(), "err\n"),
        ] {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
            let flags =
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match nix::unistd::read(fd, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!(
                        "{name} read {e} after the CLI exited (with {:?} read): another process still holds it",
                        String::from_utf8_lossy(&got)
                    ),
                }
            }
            assert_eq!(String::from_utf8_lossy(&got), want, "{name}");
        }
    }
}

#[test]
fn a_missing_command_says_so() {
    if !can_run("a_missing_command_says_so") {
        return;
    }
    let o = warren()
        .args(["run", "--rm", "--", "no-such-command"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(127));
    assert!(stderr(&o).contains("no-such-command"), "{}", stderr(&o));
}

#[test]
fn stdin_is_streamed_with_interactive() {
    if !can_run("stdin_is_streamed_with_interactive") {
        return;
    }
    let mut child = warren()
        .args([
            "run",
            "--rm",
            "-i",
            "--",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let big = "abc\n".repeat(100_000);
    let writer = std::thread::spawn(move || stdin.write_all(big.as_bytes()));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let out = stdout(&o);
    assert_eq!(out.len(), 400_000 + 5);
    assert!(out.starts_with("ABC\nABC\n") && out.ends_with("ABC\ndone\n"));
}

#[test]
fn stdin_waits_while_the_command_writes_first() {
    if !can_run("stdin_waits_while_the_command_writes_first") {
        return;
    }
    // The command writes far more than every buffer on the way holds before it reads
    // any of its input: the CLI must keep taking output while its input waits.
    let mut child = warren()
        .args([
            "run",
            "--rm",
            "-i",
            "--",
            "sh",
            "-c",
            "head -c 16777216 /dev/zero; wc -c",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&vec![b'x'; 4 << 20]));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // The CLI's sandbox dies with it.
            let _ = child.kill();
            let _ = child.wait();
            panic!("warren run stalled: its input waited while its output went unread");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    writer.join().unwrap().unwrap();
    let out = reader.join().unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(out.len(), (16 << 20) + "4194304\n".len());
    assert!(out.ends_with(b"\x004194304\n"), "wc saw other input");
}

#[test]
fn env_workdir_and_user_apply() {
    if !can_run("env_workdir_and_user_apply") {
        return;
    }
    let out = sh_ok(
        &[
            "--env",
            "A=1",
            "--env",
            "B=two words",
            "--workdir",
            "/home/user",
            "--user",
            "1000",
        ],
        "echo \"$A|$B|$(pwd)|$(id -u):$(id -g)|$(whoami)\"",
    );
    assert_eq!(out.trim(), "1|two words|/home/user|1000:1000|user");
}

#[test]
fn user_by_name_and_home() {
    if !can_run("user_by_name_and_home") {
        return;
    }
    let out = sh_ok(&["--user", "user"], "id -un; echo $HOME; cd && pwd");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["user", "/home/user", "/home/user"]
    );
}

#[test]
fn a_tty_is_a_real_terminal() {
    if !can_run("a_tty_is_a_real_terminal") {
        return;
    }
    let out = sh_ok(&["-t"], "tty; stty size; [ -t 0 ] && echo stdin-is-tty");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert!(lines[0].starts_with("/dev/pts/"), "{out}");
    assert_eq!(lines[1], "24 80");
    assert_eq!(lines[2], "stdin-is-tty");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    if !can_run("timeout_kills_the_whole_process_group") {
        return;
    }
    let t = std::time::Instant::now();
    let o = sh(&["--timeout", "500ms"], "sleep 100 & sleep 100; echo never");
    assert_eq!(o.status.code(), Some(124));
    assert!(t.elapsed().as_secs() < 10);
    assert!(stderr(&o).contains("timed out"));
    assert!(!stdout(&o).contains("never"));
}

#[test]
fn zombies_are_reaped_by_pid_1() {
    if !can_run("zombies_are_reaped_by_pid_1") {
        return;
    }
    // The subshell exits at once, orphaning its sleeps to PID 1, which must reap them.
    let out = sh_ok(
        &[],
        "(sleep 0.1 & sleep 0.1 & exit 0); sleep 0.6; \
         grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l",
    );
    assert_eq!(out.trim(), "0", "zombies left");
}

#[test]
fn a_large_output_flood_streams_completely() {
    if !can_run("a_large_output_flood_streams_completely") {
        return;
    }
    let o = sh(&[], "head -c 200000000 /dev/zero");
    assert!(o.status.success());
    assert_eq!(o.stdout.len(), 200_000_000);
}

#[test]
fn bad_flags_are_one_clear_line() {
    let o = warren()
        .args(["run", "--rm", "--publish", "80", "--", "true"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("HOSTPORT:PORT"), "{}", stderr(&o));
    let o = warren()
        .args(["run", "--rm", "--volume", "x", "--", "true"])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("NAME:/path"), "{}", stderr(&o));
}

/// `pid` and every process below it.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(pp) = ppid {
            parents.push((p, pp));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

#[test]
fn a_sandbox_killed_under_its_command_is_told_and_removed() {
    let name = "a_sandbox_killed_under_its_command_is_told_and_removed";
    if !can_run(name) {
        return;
    }
    if isolation() != "namespace" {
        warren_testkit::skip(
            name,
            "the agent is a host process of the namespace backend's",
        );
        return;
    }
    let mut cli = warren()
        .args(["run", "--rm", "--", "sh", "-c", "echo up; exec sleep 100"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 3];
    cli.stdout.as_mut().unwrap().read_exact(&mut line).unwrap();
    // The sandbox's first process, Warren's agent, killed by the host: the command's
    // connection closes, the CLI (which removes the sandbox itself) still reads what
    // ended it, says so, and removes it.
    let tree = process_tree(cli.id());
    let agent = *tree
        .iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"warren-agent"))
        })
        .expect("the sandbox's agent");
    let helper = tree[1];
    let sandboxes = test_root().join("run/sandboxes");
    let dir = std::fs::read_dir(&sandboxes)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            std::fs::read_to_string(d.join("agent.pid")).is_ok_and(|p| p == agent.to_string())
        })
        .expect("the sandbox's run directory");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let o = cli.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(137), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the sandbox stopped under the command"),
        "{}",
        stderr(&o)
    );
    // Its helper finishes the teardown after the CLI's exit, and leaves nothing.
    let gone = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).map_or(true, |s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    assert!(
        warren_testkit::eventually(10, || gone(helper) && !dir.exists()),
        "the sandbox's helper or run directory is left"
    );
}

/// The largest peak resident set among `pids`, in MiB.
fn peak_rss_mib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
        / 1024
}

#[test]
fn a_1gib_flood_to_a_slow_reader_keeps_memory_bounded() {
    use std::io::Read;
    if !can_run("a_1gib_flood_to_a_slow_reader_keeps_memory_bounded") {
        return;
    }
    let mut child = warren()
        .args(["run", "--rm", "--", "head", "-c", "1073741824", "/dev/zero"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut since_pause, mut peak) = (0usize, 0usize, 0u64);
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        since_pause += n;
        // Slower than the producer, so the whole chain has to hold back.
        if since_pause >= 8 << 20 {
            since_pause = 0;
            std::thread::sleep(std::time::Duration::from_millis(10));
            // The CLI, the helper, the agent and `head`; peaks only grow.
            peak = peak.max(peak_rss_mib(&process_tree(child.id())));
        }
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, 1 << 30);
    assert!(peak > 0, "the processes were measured");
    assert!(peak < 64, "a process of the chain grew to {peak} MiB");
}

/// `warren run` without `--rm` keeps its sandbox's files; `warren gc` lists them with
/// why (`--dry-run`) and removes them, but never those of a run still going. A run
/// killed outright is found once its sandbox is torn down. On directories of its own, so
/// no other test's kept files are touched.
#[test]
fn gc_removes_what_a_finished_run_kept_and_never_a_live_runs() {
    if !can_run("gc_removes_what_a_finished_run_kept_and_never_a_live_runs") {
        return;
    }
    let root = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let warren = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_warren"));
        c.env("WARREN_RUN_DIR", root.path().join("run"))
            .env("WARREN_DATA_DIR", root.path().join("data"))
            .stdin(Stdio::null());
        c
    };
    let runs = root.path().join("data/runs");
    let files = |id: &str| root.path().join("data/sandboxes").join(id);
    let marks = || -> Vec<String> {
        std::fs::read_dir(&runs)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };

    let o = warren()
        .args(["run", "--", "sh", "-c", "echo kept > /kept-by-run"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`warren gc` removes them"),
        "{}",
        stderr(&o)
    );
    let done = marks();
    assert_eq!(done.len(), 1, "{done:?}");
    let done = done[0].clone();
    assert!(files(&done).exists());

    // A run still going.
    let mut live = warren()
        .args(["run", "--", "sleep", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let live_id = loop {
        if let Some(id) = marks().into_iter().find(|m| *m != done) {
            if files(id.as_str()).exists() {
                break id;
            }
        }
        assert!(Instant::now() < deadline, "the second run never started");
        std::thread::sleep(Duration::from_millis(100));
    };

    let o = warren().args(["gc", "--dry-run"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stdout(&o);
    assert!(table.contains(&done), "{table}");
    assert!(
        table.contains("kept by `warren run` without --rm"),
        "{table}"
    );
    assert!(!table.contains(&live_id), "a live run is listed:\n{table}");
    assert!(
        stderr(&o).contains("1 kept run(s) would be removed"),
        "{}",
        stderr(&o)
    );
    assert!(files(&done).exists(), "a dry run removed files");

    let o = warren().arg("gc").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{done}\n"));
    assert!(!files(&done).exists());
    assert!(files(&live_id).exists(), "a live run's files were removed");

    // Killed outright: found once its sandbox is down.
    live.kill().unwrap();
    live.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = warren().args(["gc", "--dry-run", "-q"]).output().unwrap();
        if stdout(&o) == format!("{live_id}\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed run is never listed: {}",
            stdout(&o)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let o = warren().arg("gc").output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!files(&live_id).exists());
    assert!(marks().is_empty(), "{:?}", marks());
    let o = warren().arg("doctor").output().unwrap();
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

/// Without a daemon, `warren run` keeps its sandbox's run directory in memory as a
/// daemon does (a tmpfs of its own on `RUN/sandboxes` where that is on a disk: each file
/// and directory made there cost the disk's inode allocator), and the helper of the last
/// such sandbox to end takes the tmpfs away. Two runs at once share it.
#[test]
fn its_run_directories_are_in_memory_and_gone_after_the_last_run() {
    let test = "its_run_directories_are_in_memory_and_gone_after_the_last_run";
    if !can_run(test) || isolation() != "namespace" {
        if can_run(test) {
            eprintln!("SKIPPED {test}: the namespace backend's helper keeps the run directories");
        }
        return;
    }
    let root = test_root();
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let runs = dir.path().join("run").join("sandboxes");
    let on_disk =
        nix::sys::statfs::statfs(&root).unwrap().filesystem_type() != nix::sys::statfs::TMPFS_MAGIC;
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(warren_runtime::rundir::run_mount)
            .any(|at| std::path::Path::new(&at) == runs)
    };
    let run = || {
        warren()
            .env("WARREN_RUN_DIR", dir.path().join("run"))
            .args(["run", "--rm", "--", "sleep", "1"])
            .spawn()
            .unwrap()
    };
    let (mut a, mut b) = (run(), run());
    let deadline = Instant::now() + Duration::from_secs(10);
    let count = || std::fs::read_dir(&runs).map_or(0, |d| d.count());
    while count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(), 2, "both runs have their directory");
    assert_eq!(mounted(), on_disk, "a tmpfs on {}", runs.display());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    // The helpers finish their teardown after their runs have exited.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (mounted() || count() > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!mounted(), "the tmpfs is left on {}", runs.display());
    assert_eq!(count(), 0);
    // A run with a published port: its helper, whose listeners are threads, cannot
    // leave its own mount namespace to release the tmpfs; the CLI does, once it is gone.
    let port = free_port().to_string();
    let o = warren()
        .env("WARREN_RUN_DIR", dir.path().join("run"))
        .args(["run", "--rm", "--network", "nat", "-p"])
        .arg(format!("{port}:8080"))
        .args(["--", "true"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !mounted(),
        "the tmpfs is left after a run with a published port"
    );
    assert_eq!(count(), 0);
}
