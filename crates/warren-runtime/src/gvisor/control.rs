//! The sandbox's control socket: the uRPC server runsc's own commands talk to.
//!
//! `runsc kill` starts a Go process (20-40 ms here) to send one JSON call over the
//! socket runsc made for the sandbox in its root directory (`runsc-<id>.sock`, mode
//! 0755 in a root-owned directory: only the host's root reaches it). Warren signals its
//! agent on every pause and resume, so it sends that call itself (about 1 ms). The
//! protocol is runsc's, not a published interface: any failure (no socket where runsc
//! puts it, an unknown method, an answer that does not parse) leaves the caller to run
//! `runsc kill` as before, so a runsc that changed it costs time, never correctness.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a call may wait on the Sentry: a signal is queued at once, so only a
/// Sentry that stopped answering takes this long (and `runsc kill` then tries too).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer larger than this is not the one a signal gets.
const MAX_ANSWER: usize = 64 << 10;

/// The control socket runsc makes for `container` (the sandbox's first container, so
/// the sandbox's id) under its root directory.
pub(super) fn socket_path(root: &Path, container: &str) -> PathBuf {
    root.join(format!("runsc-{container}.sock"))
}

#[derive(Serialize)]
struct Call<'a, A> {
    method: &'a str,
    arg: A,
}

/// runsc's `boot.SignalArgs`: field names as Go writes them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SignalArgs<'a> {
    #[serde(rename = "CID")]
    cid: &'a str,
    signo: i32,
    /// 0: the container's first process.
    #[serde(rename = "PID")]
    pid: i32,
    /// 0: `DeliverToProcess`, to that one process.
    mode: u32,
}

#[derive(Deserialize)]
struct Answer {
    success: bool,
    #[serde(default)]
    err: String,
}

/// Delivers `signal` to the first process of `container` (Warren's agent) through the
/// control socket at `socket`, as `runsc kill CONTAINER SIGNAL` does.
pub(super) fn signal(socket: &Path, container: &str, signal: i32) -> io::Result<()> {
    let call = Call {
        method: "containerManager.Signal",
        arg: SignalArgs {
            cid: container,
            signo: signal,
            pid: 0,
            mode: 0,
        },
    };
    let answer: Answer = self::call(socket, &call)?;
    if answer.success {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the sandbox refused the signal: {}",
            answer.err
        )))
    }
}

/// One call on a new connection: the call as one JSON value, the answer as the next
/// JSON value read back (the server keeps the connection open for more).
fn call<A: Serialize, R: for<'de> Deserialize<'de>>(socket: &Path, call: &A) -> io::Result<R> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(CALL_TIMEOUT))?;
    s.set_write_timeout(Some(CALL_TIMEOUT))?;
    s.write_all(&serde_json::to_vec(call)?)?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the sandbox closed its control socket before answering",
            ));
        }
        answer.extend_from_slice(&chunk[..n]);
        match serde_json::from_slice::<R>(&answer) {
            Ok(r) => return Ok(r),
            Err(e) if e.is_eof() && answer.len() < MAX_ANSWER => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the sandbox's control socket answered what is not a call's result: {e}"
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A control socket that reads one call and answers `answer` in two writes (as a
    /// stream may deliver it), handing back the call it read.
    fn server(
        answer: &'static [u8],
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::thread::JoinHandle<serde_json::Value>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "warren-abc");
        let listener = UnixListener::bind(&path).unwrap();
        let served = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 256];
            let call = loop {
                let n = s.read(&mut chunk).unwrap();
                got.extend_from_slice(&chunk[..n]);
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&got) {
                    break v;
                }
            };
            let (a, b) = answer.split_at(answer.len() / 2);
            // The client may have given up on the first half: no write is checked.
            let _ = s.write_all(a);
            std::thread::sleep(Duration::from_millis(20));
            let _ = s.write_all(b);
            // The connection stays open, as runsc's does: the answer must be read
            // without waiting for its end.
            std::thread::sleep(Duration::from_millis(200));
            call
        });
        (dir, path, served)
    }

    #[test]
    fn a_signal_is_the_call_runsc_kill_makes_and_its_answer_is_read_whole() {
        let (_dir, path, served) = server(br#"{"success":true,"err":"","result":{}}"#);
        signal(&path, "warren-abc", 12).expect("the signal is delivered");
        assert_eq!(
            served.join().unwrap(),
            serde_json::json!({
                "method": "containerManager.Signal",
                "arg": {"CID": "warren-abc", "Signo": 12, "PID": 0, "Mode": 0}
            })
        );
    }

    #[test]
    fn a_refusal_an_unknown_method_or_no_socket_is_an_error_for_the_caller_to_fall_back_on() {
        let (_dir, path, served) =
            server(br#"{"success":false,"err":"unknown method","result":null}"#);
        let e = signal(&path, "warren-abc", 10).unwrap_err();
        assert!(e.to_string().contains("unknown method"), "{e}");
        served.join().unwrap();

        let (_dir, path, served) = server(b"not json at all");
        let e = signal(&path, "warren-abc", 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        served.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let e = signal(&socket_path(dir.path(), "warren-abc"), "warren-abc", 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    /// Removes the container however the test ends.
    struct Container<'a> {
        runsc: &'a Path,
        root: &'a Path,
        id: &'a str,
    }

    impl Drop for Container<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new(self.runsc)
                .arg(format!("--root={}", self.root.display()))
                .args(["delete", "--force", self.id])
                .output();
        }
    }

    #[test]
    fn the_installed_runsc_takes_the_call_and_its_container_gets_the_signal() {
        let test = "the_installed_runsc_takes_the_call_and_its_container_gets_the_signal";
        if !warren_testkit::needs_root(test, "runsc runs containers as root") {
            return;
        }
        let Some(runsc) = crate::bundle::which("runsc") else {
            warren_testkit::skip(test, "no runsc on the PATH");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let (root, bundle) = (dir.path().join("root"), dir.path().join("bundle"));
        std::fs::create_dir_all(&bundle).unwrap();
        // The host's own files, read-only; the first process ends only on SIGUSR2 (a
        // pid namespace's first process ignores what it has no handler for).
        let config = serde_json::json!({
            "ociVersion": "1.0.0",
            "process": {
                "args": ["/bin/sh", "-c", "trap 'exit 7' USR2; while :; do sleep 0.05; done"],
                "cwd": "/",
                "env": ["PATH=/usr/bin:/bin"],
                "user": {"uid": 0, "gid": 0}
            },
            "root": {"path": "/", "readonly": true},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
        });
        std::fs::write(bundle.join("config.json"), config.to_string()).unwrap();
        let id = format!("warren-control-test-{}", std::process::id());
        let pid_file = dir.path().join("pid");
        let _container = Container {
            runsc: &runsc,
            root: &root,
            id: &id,
        };
        let out = std::process::Command::new(&runsc)
            .arg(format!("--root={}", root.display()))
            .args(["--platform=ptrace", "--network=none", "run", "-detach"])
            .arg(format!("--pid-file={}", pid_file.display()))
            .arg(format!("--bundle={}", bundle.display()))
            .arg(&id)
            // The detached sandbox keeps what it inherits open: no pipe to wait on.
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(out.success(), "runsc run: {out}");
        let sentry = std::fs::read_to_string(&pid_file).unwrap();
        let sentry = Path::new("/proc").join(sentry.trim());
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            sentry.exists(),
            "the container ended before it was signalled"
        );

        signal(
            &socket_path(&root, &id),
            &id,
            nix::sys::signal::Signal::SIGUSR2 as i32,
        )
        .expect("the signal is taken");
        // Its first process ends, and with it the sandbox.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sentry.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the signal did not reach the container's first process"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
