//! Pseudo-terminals for sandboxed processes, and raw mode for the CLI's own terminal.
//!
//! The pair is opened without a path to the slave: `TIOCGPTPEER` hands back the slave of
//! a master directly, so it works whatever the caller's mount namespace shows under
//! /dev/pts, and both ends are close-on-exec from the start, so a concurrent spawn can
//! never inherit them.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::sys::termios::{self, SetArg, Termios};

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// Both ends of a new pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    /// The agent's end: reads the terminal's output, writes its input.
    pub master: OwnedFd,
    /// The process's end, which becomes its controlling terminal.
    pub slave: OwnedFd,
}

/// Opens a pseudo-terminal of `size`.
pub fn open(size: TermSize) -> io::Result<Pty> {
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which points at `unlock`.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new descriptor.
    let fd = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    let slave = if fd >= 0 {
        // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    } else {
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) {
            return Err(e);
        }
        // A kernel without TIOCGPTPEER (before 4.13, or gVisor's): the slave by its
        // number, in the devpts instance next to this /dev/ptmx.
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to the pointer, which points at `n`.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
            return Err(io::Error::last_os_error());
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(format!("/dev/pts/{n}"))?
            .into()
    };
    set_size(master.as_fd(), size)?;
    Ok(Pty { master, slave })
}

/// Sets the size of the terminal behind `fd` (either end); the kernel sends SIGWINCH to
/// the terminal's foreground process group.
pub fn set_size(fd: BorrowedFd<'_>, size: TermSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which points at `ws`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size of the terminal behind `fd`.
pub fn size(fd: BorrowedFd<'_>) -> io::Result<TermSize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which points at `ws`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TermSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// A terminal in raw mode; dropping it restores the settings it found.
#[derive(Debug)]
pub struct RawMode<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawMode<'fd> {
    /// Puts the terminal behind `fd` into raw mode: no echo, no line editing, no signals
    /// from keys, so every keystroke reaches the sandbox as typed.
    pub fn enter(fd: BorrowedFd<'fd>) -> io::Result<Self> {
        let saved = termios::tcgetattr(fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(Self { fd, saved })
    }

    /// Restores the saved settings now, reporting failure (drop ignores it).
    pub fn restore(self) -> io::Result<()> {
        termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved)?;
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(self.fd, SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_round_trips_and_raw_mode_restores() {
        let pty = open(TermSize { rows: 24, cols: 80 }).unwrap();
        assert_eq!(
            size(pty.slave.as_fd()).unwrap(),
            TermSize { rows: 24, cols: 80 }
        );
        set_size(
            pty.master.as_fd(),
            TermSize {
                rows: 50,
                cols: 132,
            },
        )
        .unwrap();
        assert_eq!(
            size(pty.slave.as_fd()).unwrap(),
            TermSize {
                rows: 50,
                cols: 132
            }
        );

        let before = termios::tcgetattr(pty.slave.as_fd()).unwrap();
        let raw = RawMode::enter(pty.slave.as_fd()).unwrap();
        let during = termios::tcgetattr(pty.slave.as_fd()).unwrap();
        assert!(!during.local_flags.contains(termios::LocalFlags::ECHO));
        raw.restore().unwrap();
        let after = termios::tcgetattr(pty.slave.as_fd()).unwrap();
        assert_eq!(before.local_flags, after.local_flags);
        assert_eq!(before.input_flags, after.input_flags);
    }
}
