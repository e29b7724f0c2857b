//! The process's own heap.
//!
//! Memory freed inside the C allocator's heap stays in the process: the allocator keeps
//! it for the next allocation and gives back only what lies at the heap's top. An agent
//! that streamed a command's output freed its buffers (some hundreds of KiB) when the
//! command ended, and held those pages for the rest of its sandbox's life.

/// Gives the heap's free pages back to the kernel (glibc's `malloc_trim(0)`); nothing
/// where the C library is another.
pub fn release_free() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes no pointer and locks the allocator's arenas itself; it
    // only returns free pages (madvise), never memory still allocated.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private_dirty_kib() -> u64 {
        std::fs::read_to_string("/proc/self/smaps_rollup")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Private_Dirty:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    #[test]
    fn freed_buffers_go_back_to_the_kernel() {
        // Below the allocator's mmap threshold, so from the heap; a small allocation
        // kept after them keeps them from the heap's top, which is trimmed anyway.
        let bufs: Vec<Vec<u8>> = (0..256).map(|_| vec![1u8; 64 << 10]).collect();
        let pin = vec![1u8; 64];
        let before = private_dirty_kib();
        drop(bufs);
        release_free();
        let after = private_dirty_kib();
        drop(pin);
        // 16 MiB were freed; other tests' threads allocate and free meanwhile (a
        // process's dirty memory moved by most of a MiB while 2 were freed), so half.
        assert!(
            before.saturating_sub(after) >= 8 << 10,
            "private dirty {before} KiB -> {after} KiB"
        );
    }
}
