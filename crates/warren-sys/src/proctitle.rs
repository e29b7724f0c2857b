//! What /proc/PID/cmdline shows of a process.
//!
//! The kernel reads a process's command line from its own memory, between the
//! `arg_start` and `arg_end` addresses of /proc/PID/stat. The agent is a clone of the
//! helper, so its command line is the helper's: the host path of the `warren` binary, and
//! for `warren run` the whole command line of the CLI. Every process in a sandbox can
//! read PID 1's, and none of that is the sandbox's business, so the helper overwrites it
//! in place, through /proc/PID/mem (changing where the kernel looks would need
//! CAP_SYS_RESOURCE), before the agent runs.

use std::io::{self, Seek, SeekFrom, Write};

/// Replaces the calling process's command line with `name` (cut to fit).
pub fn set(name: &str) -> io::Result<()> {
    set_of("self", name)
}

/// Replaces process `pid`'s command line with `name` (cut to fit). Needs to be allowed
/// to write its memory: the process itself, or its parent as root.
pub fn set_of(pid: &str, name: &str) -> io::Result<()> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces and parentheses itself.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("unreadable /proc/self/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 48 of the whole line is arg_start; `rest` starts at field 3.
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("unreadable /proc/self/stat"))
    };
    let (start, end) = (field(48)?, field(49)?);
    let len = end.saturating_sub(start) as usize;
    if len == 0 {
        return Ok(());
    }
    let mut area = vec![0u8; len];
    let n = name.len().min(len - 1);
    area[..n].copy_from_slice(&name.as_bytes()[..n]);
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))?;
    mem.seek(SeekFrom::Start(start))?;
    mem.write_all(&area)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_child_can_rename_itself() {
        // In a child, so that the test harness keeps its own command line.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "proctitle::tests::renamed", "--nocapture"])
            .env("WARREN_PROCTITLE_CHILD", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("cmdline=\"warren-agent\""),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// The child's half of `a_child_can_rename_itself`: does nothing in the harness.
    #[test]
    fn renamed() {
        if std::env::var_os("WARREN_PROCTITLE_CHILD").is_none() {
            return;
        }
        super::set("warren-agent").unwrap();
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap();
        let shown: Vec<u8> = cmdline.into_iter().take_while(|b| *b != 0).collect();
        println!("cmdline={:?}", String::from_utf8_lossy(&shown));
        let rest = std::fs::read("/proc/self/cmdline").unwrap();
        assert!(
            !String::from_utf8_lossy(&rest).contains("proctitle"),
            "the old arguments are still there"
        );
    }
}
