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

/// The CPUs this process may run on (`std::thread::available_parallelism`: its affinity
/// and its cgroup's quota), read once: the answer takes a dozen system calls and files,
/// and a create checks its CPU limit against it.
pub fn host_cores() -> u32 {
    static CORES: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    })
}
