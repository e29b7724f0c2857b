//! Non-blocking descriptors and per-channel credit: the two places where the agent waits
//! for someone else to make room.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::net::unix::pipe;
use tokio::sync::Semaphore;
use warren_types::proto::INITIAL_WINDOW;

/// The reading end of a pipe, or a terminal master, driven by the runtime. Unlike
/// `tokio::process`, this works on descriptors from `std::process`, whose children the
/// agent reaps itself.
pub(crate) fn reader(fd: impl Into<OwnedFd>) -> io::Result<pipe::Receiver> {
    pipe::Receiver::from_owned_fd_unchecked(nonblocking(fd.into())?)
}

/// The writing end of a pipe, or a terminal master.
pub(crate) fn writer(fd: impl Into<OwnedFd>) -> io::Result<pipe::Sender> {
    pipe::Sender::from_owned_fd_unchecked(nonblocking(fd.into())?)
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(fd)
}

/// What the client allows the agent to send on a channel, in bytes.
#[derive(Debug)]
pub(crate) struct Credit(Semaphore);

/// A cap on hoarded credit, far below the semaphore's own limit, so that no sequence of
/// grants can make it panic.
const MAX_CREDIT: usize = 1 << 40;

impl Credit {
    pub(crate) fn new() -> Self {
        Self(Semaphore::new(INITIAL_WINDOW as usize))
    }

    pub(crate) fn grant(&self, bytes: u32) {
        if self.0.available_permits() < MAX_CREDIT {
            self.0.add_permits(bytes as usize);
        }
    }

    /// Waits for at least `min` bytes of credit and takes up to `max` (`min` ≤ `max`;
    /// `min` at most [`INITIAL_WINDOW`], so it can always be met).
    pub(crate) async fn take_between(&self, min: usize, max: usize) -> usize {
        let Ok(first) = self.0.acquire_many(min as u32).await else {
            return 0;
        };
        first.forget();
        let more = (max.saturating_sub(min)).min(self.0.available_permits());
        match u32::try_from(more)
            .ok()
            .and_then(|m| self.0.try_acquire_many(m).ok())
        {
            Some(permits) => {
                permits.forget();
                min + more
            }
            None => min,
        }
    }

    /// Gives back credit taken but not used.
    pub(crate) fn refund(&self, bytes: usize) {
        self.0.add_permits(bytes);
    }
}
