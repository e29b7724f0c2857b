//! Non-blocking descriptors and per-channel credit, both ways: the places where the
//! agent waits for someone else to make room, and where it tells the client it has made
//! some.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, Semaphore};
use warren_types::proto::{frame_credit, Frame, INITIAL_WINDOW, INPUT_WINDOW};

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

/// What the agent lets the client send on a channel (stdin, upload data), in bytes:
/// charged as frames arrive, given back with a `Credit` frame as the bytes leave the
/// agent. What is outstanding is what the agent holds for the channel.
///
/// Credit given back is added up until the connection's writer sends it, so a channel
/// is queued for the writer at most once however many frames it gives back meanwhile.
#[derive(Debug)]
pub(crate) struct Window {
    left: AtomicUsize,
    /// Given back and not yet sent.
    unsent: AtomicUsize,
    ch: u32,
    /// The connection's queue of windows with credit to send, which never waits.
    grants: mpsc::UnboundedSender<Arc<Window>>,
}

impl Window {
    pub(crate) fn new(ch: u32, grants: mpsc::UnboundedSender<Arc<Window>>) -> Arc<Self> {
        Arc::new(Self {
            left: AtomicUsize::new(INPUT_WINDOW as usize),
            unsent: AtomicUsize::new(0),
            ch,
            grants,
        })
    }

    /// The credit frame for what was given back since the last one, if anything was.
    pub(crate) fn grant(&self) -> Option<Frame> {
        let n = self.unsent.swap(0, Ordering::AcqRel);
        (n > 0).then(|| Frame::credit(self.ch, n.min(u32::MAX as usize) as u32))
    }

    /// Charges a frame that arrived with `data`; `None` when the client sent beyond its
    /// credit. The credit comes back when the returned [`Charged`] is dropped.
    pub(crate) fn charge(self: &Arc<Self>, data: Vec<u8>) -> Option<Charged> {
        let cost = frame_credit(data.len());
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(cost)
            })
            .ok()?;
        Some(Charged {
            data,
            charge: Some((self.clone(), cost)),
        })
    }

    fn give_back(self: Arc<Self>, cost: usize) {
        // The count first: the client may spend the grant as soon as it sees it.
        self.left.fetch_add(cost, Ordering::AcqRel);
        if self.unsent.fetch_add(cost, Ordering::AcqRel) == 0 {
            let grants = self.grants.clone();
            let _ = grants.send(self);
        }
    }
}

/// Bytes from the client on their way into a process or a file. Dropping them, written
/// or thrown away, gives their credit back to the client.
#[derive(Debug)]
pub(crate) struct Charged {
    pub(crate) data: Vec<u8>,
    charge: Option<(Arc<Window>, usize)>,
}

impl Charged {
    /// Bytes the agent adds itself, which cost the client nothing.
    pub(crate) fn free(data: Vec<u8>) -> Self {
        Self { data, charge: None }
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        if let Some((window, cost)) = self.charge.take() {
            window.give_back(cost);
        }
    }
}
