//! A terminal for tests: a tmux server of the test's own (`-L` with a name of its own,
//! its socket under a directory of the test's, no configuration file read), killed at
//! the end even when the test fails.
// Each test file uses a part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{stderr, stdout};

pub const TMUX: &str = "/usr/bin/tmux";

/// A tmux server of the test's own with one detached session; killed on drop.
pub struct Tmux {
    name: String,
    dir: PathBuf,
}

impl Tmux {
    /// Runs `command` (a shell command line) in a new detached session, 250 columns wide
    /// so that no line of interest wraps.
    pub fn start(dir: &Path, tag: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            name: format!("warren-{tag}-{}", std::process::id()),
            dir: dir.to_path_buf(),
        };
        let o = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "250",
            "-y",
            "50",
            command,
        ]);
        assert!(o.status.success(), "tmux new-session: {}", stderr(&o));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(TMUX)
            .env("TMUX_TMPDIR", &self.dir)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .args(["-L", &self.name, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    /// The pane's text, wrapped lines joined, with its history.
    pub fn screen(&self) -> String {
        stdout(&self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", "t"]))
    }

    /// Waits (up to 20 s) for the pane to show `needle`; the screen then.
    pub fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {needle:?}; the pane shows:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `text` as it is.
    pub fn type_text(&self, text: &str) {
        let o = self.run(&["send-keys", "-t", "t", "-l", text]);
        assert!(o.status.success(), "tmux send-keys: {}", stderr(&o));
    }

    /// Presses keys named as tmux names them (`Enter`, `C-c`).
    pub fn press(&self, keys: &[&str]) {
        let o = self.run(&[&["send-keys", "-t", "t"], keys].concat());
        assert!(o.status.success(), "tmux send-keys: {}", stderr(&o));
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("the tmux pane showed:\n{}", self.screen());
        }
        let _ = self.run(&["kill-server"]);
    }
}

/// Whether tmux is there to drive a terminal; otherwise the skip is recorded.
pub fn has_tmux(test: &str) -> bool {
    if Path::new(TMUX).exists() {
        return true;
    }
    warren_testkit::skip(test, "needs tmux at /usr/bin/tmux to drive a terminal");
    false
}

impl Tmux {
    /// Resizes the session's window, as a user dragging the terminal's corner would:
    /// the program in it gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) {
        let (x, y) = (cols.to_string(), rows.to_string());
        let o = self.run(&["resize-window", "-t", "t", "-x", &x, "-y", &y]);
        assert!(o.status.success(), "tmux resize-window: {}", stderr(&o));
    }
}

/// `command` as one shell command line, each word quoted.
pub fn shell_line(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|w| format!("'{}'", w.to_string_lossy().replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}
