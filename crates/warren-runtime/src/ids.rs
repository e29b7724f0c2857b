//! Which host ids a sandbox runs as.
//!
//! Files are stored with one range of ids on the host's disk, whatever sandbox wrote
//! them: root inside is [`HOST_ID_BASE`], `user` is [`HOST_ID_BASE`] + 1000. That is
//! what templates, layers, writable layers and volumes hold, so any of them can be used
//! by any sandbox.
//!
//! Processes are not: each running sandbox takes a *slot*, a range of host ids of its
//! own (65,536 ids for the ids 0-65,535 inside, plus one more for the owner of its user
//! namespace, which no file and no process ever has). Its mounts are idmapped, so the
//! files stored under the common range appear, and are created, under the slot's range.
//! Two sandboxes therefore never share a host uid: the kernel's per-user counters and
//! limits (pipe buffers, epoll watches, locked memory, and through the namespace owner
//! inotify instances, pending signals, message queue bytes, processes) are each
//! sandbox's own, and a process of one sandbox that somehow met another's could not
//! signal or inspect it. A file a sandbox leaves on the host's disk belongs to no
//! running sandbox.
//!
//! A slot is held by binding an abstract unix socket named after it in the host's
//! network namespace: the kernel frees the name when the helper that holds it exits,
//! however it exits, so there is no lease to leak, and every Warren on the host (any
//! data directory) sees the same names.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::{Error, Result, HOST_ID_BASE, ID_COUNT};

/// The host uid of the first slot's root.
pub const FIRST_SLOT_BASE: u32 = 1 << 30;
/// Host ids per slot: [`ID_COUNT`] mapped ids and the namespace owner, rounded up.
pub const SLOT_SPAN: u32 = 1 << 17;
/// How many slots there are (the last ends below 2^32 - 1, which means "no id").
pub const SLOTS: u32 = 16_384;

/// A slot, held while this value lives.
#[derive(Debug)]
pub struct IdSlot {
    pub slot: u32,
    /// The host uid and gid of root inside.
    pub base: u32,
    /// The owner of the sandbox's user namespace: unmapped, so nothing inside has it.
    pub owner: u32,
    _held: UnixDatagram,
}

fn slot_name(slot: u32) -> String {
    format!("warren/id-slot/{slot}")
}

impl IdSlot {
    /// Takes a free slot, starting the search at a random one.
    pub fn allocate() -> Result<IdSlot> {
        let start = u32::from_le_bytes(
            warren_types::random::bytes(4)?
                .try_into()
                .expect("four bytes"),
        ) % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let addr = SocketAddr::from_abstract_name(slot_name(slot).as_bytes())
                .map_err(crate::io_err("name an id slot"))?;
            match UnixDatagram::bind_addr(&addr) {
                Ok(sock) => {
                    let base = FIRST_SLOT_BASE + slot * SLOT_SPAN;
                    return Ok(IdSlot {
                        slot,
                        base,
                        owner: base + ID_COUNT,
                        _held: sock,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(crate::io_err("take an id slot")(e)),
            }
        }
        Err(Error::Setup(format!(
            "all {SLOTS} id slots are taken: no more sandboxes can run on this host at once"
        )))
    }

    /// The sandbox's own maps: ids 0-65,535 inside are the slot's.
    pub fn map(&self) -> String {
        format!("0 {} {ID_COUNT}\n", self.base)
    }

    /// The maps that show files stored under the common range as the slot's: an
    /// idmapped mount through them. Host root stays itself, so the mounter (the helper)
    /// can make overlayfs's work directory.
    pub fn storage_map(&self) -> String {
        format!("0 0 1\n{HOST_ID_BASE} {} {ID_COUNT}\n", self.base)
    }
}

/// Whether slot `slot` is held by some live process.
pub fn slot_taken(slot: u32) -> bool {
    let Ok(addr) = SocketAddr::from_abstract_name(slot_name(slot).as_bytes()) else {
        return false;
    };
    match UnixDatagram::bind_addr(&addr) {
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::AddrInUse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_freed_with_their_holder() {
        let a = IdSlot::allocate().unwrap();
        let b = IdSlot::allocate().unwrap();
        assert_ne!(a.slot, b.slot);
        assert!(slot_taken(a.slot));
        let slot = a.slot;
        drop(a);
        assert!(!slot_taken(slot));
        assert_eq!(b.owner, b.base + ID_COUNT);
        assert!(b.owner < b.base + SLOT_SPAN);
    }

    #[test]
    fn the_last_slot_ends_below_the_invalid_id() {
        let end = u64::from(FIRST_SLOT_BASE) + u64::from(SLOTS) * u64::from(SLOT_SPAN);
        assert!(end < u64::from(u32::MAX));
        assert!(u64::from(FIRST_SLOT_BASE) > u64::from(HOST_ID_BASE) + u64::from(ID_COUNT));
    }
}
