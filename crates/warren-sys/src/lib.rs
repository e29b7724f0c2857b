//! Every syscall Warren makes, behind safe functions.
//!
//! This is the only crate allowed `unsafe`; each block says why it is sound.

pub mod caps;
pub mod cgroup;
pub mod child;
pub mod fd;
pub mod fsid;
pub mod heap;
pub mod linked;
pub mod mount;
pub mod ns;
pub mod proctitle;
pub mod pty;
pub mod seccomp;

#[cfg(test)]
mod testing;
