//! What /proc/PID/cmdline shows of a process.
//!
//! The kernel reads a process's command line from its own memory, between the
//! `arg_start` and `arg_end` addresses of /proc/PID/stat. The agent is a clone of the
//! helper, so its command line is the helper's: the host path of the `warren` binary, and
//! for `warren run` the whole command line of the CLI. Every process in a sandbox can
//! read PID 1's, and none of that is the sandbox's business, so the agent overwrites it in
//! place, in its own memory (changing where the kernel looks would need
//! CAP_SYS_RESOURCE), before anything of the sandbox runs. The helper finds the place
//! before the clone: a clone without `CLONE_VM` has its parent's layout.

use std::io;

/// Where a process's argument strings are: the room its command line has.
#[derive(Debug, Clone, Copy)]
pub struct ArgArea {
    start: usize,
    len: usize,
}

impl ArgArea {
    /// The calling process's. It stays the place in this process until it execs, and in
    /// every process cloned from it without `CLONE_VM` until that one execs: the strings
    /// are on the stack the kernel made at exec, which a copy of the memory keeps where
    /// it was. So it is read from /proc/self/stat once, and kept: a process forked after
    /// (the zygote's helpers, their sandboxes' first processes) has it without a read.
    pub fn own() -> io::Result<Self> {
        static OWN: std::sync::OnceLock<ArgArea> = std::sync::OnceLock::new();
        if let Some(area) = OWN.get() {
            return Ok(*area);
        }
        let area = Self::read()?;
        Ok(*OWN.get_or_init(|| area))
    }

    fn read() -> io::Result<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat")?;
        // Fields after the command name, which may hold spaces and parentheses itself.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| io::Error::other("unreadable /proc/self/stat"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field 48 of the whole line is arg_start; `rest` starts at field 3.
        let field = |n: usize| -> io::Result<usize> {
            fields
                .get(n - 3)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| io::Error::other("unreadable /proc/self/stat"))
        };
        let (start, end) = (field(48)?, field(49)?);
        Ok(Self {
            start,
            len: end.saturating_sub(start),
        })
    }

    /// Replaces the command line with `name` (cut to fit, the rest zeroed), in place: a
    /// write of the process's own memory, which costs a page fault at most (a write
    /// through /proc/PID/mem from another process cost some 0.4 ms, for the remote
    /// page walk and copy).
    ///
    /// For a process with one thread, or none that reads `std::env::args` meanwhile.
    pub fn write(&self, name: &str) {
        if self.len == 0 {
            return;
        }
        let n = name.len().min(self.len - 1);
        let area = self.start as *mut u8;
        // SAFETY: [start, start + len) is this process's argument strings (see `own`: an
        // area only comes from this process's /proc/self/stat, and stays valid in a
        // process cloned from it until an exec, which drops the area with the memory),
        // on its stack, mapped readable and writable for the process's life. No Rust
        // value lives there: std reads the strings through raw pointers when asked for
        // them, and the caller runs no thread that asks meanwhile. Both writes stay
        // inside the area (`n < len`).
        unsafe {
            std::ptr::copy_nonoverlapping(name.as_ptr(), area, n);
            std::ptr::write_bytes(area.add(n), 0, self.len - n);
        }
    }
}

/// Replaces the calling process's command line with `name` (cut to fit).
pub fn set(name: &str) -> io::Result<()> {
    ArgArea::own()?.write(name);
    Ok(())
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
