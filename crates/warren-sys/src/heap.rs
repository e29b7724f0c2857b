//! Memory a process holds that it can give back once idle: its heap's free pages, and
//! the page tables that map its code.
//!
//! Memory freed inside the C allocator's heap stays in the process: the allocator keeps
//! it for the next allocation and gives back only what lies at the heap's top. An agent
//! that streamed a command's output freed its buffers (some hundreds of KiB) when the
//! command ended, and held those pages for the rest of its sandbox's life.
//!
//! The pages of Warren's binary and its libraries are shared with every other process,
//! but the page tables that map them are each process's own: a helper that ran its
//! set-up through the binary's code keeps some 30 KiB of them (one 4 KiB table for
//! every 2 MiB of code it touched), which it never needs again while it waits.

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

/// Lets go of every page this process maps of its loaded objects' read-only segments
/// (the program's code and read-only data, the libraries'), and with them of the page
/// tables that mapped them; the next access maps the same pages of the page cache
/// again, as after the kernel reclaimed them. Returns the KiB of the ranges let go of
/// (what was mapped of them or not).
///
/// Only a segment that is not writable is let go of: the loader never writes one (it
/// relocates into writable segments, and makes part of them read-only after), unless
/// the object has text relocations, and such an object is left alone. The loader's lock
/// is held throughout (`dl_iterate_phdr`): no object is loaded or unloaded meanwhile.
pub fn release_read_only_segments() -> u64 {
    let mut released = 0usize;
    // SAFETY: `each` is called once per loaded object with the loader's own description
    // of it, and `data` is the `usize` above, alive and not otherwise used until the call
    // returns; `each` reads only what the loader gave it (see there).
    unsafe {
        libc::dl_iterate_phdr(Some(each), std::ptr::addr_of_mut!(released).cast());
    }
    (released >> 10) as u64
}

/// `release_read_only_segments`' look at one loaded object.
///
/// # Safety
///
/// `info` must be what `dl_iterate_phdr` passes (its program headers and, through them,
/// its dynamic section, mapped while the call lasts), `data` a valid `*mut usize`.
unsafe extern "C" fn each(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the caller's contract: `info` is the loader's and `data` our `usize`.
    let (info, released) = unsafe { (&*info, &mut *data.cast::<usize>()) };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader's program headers of this object, `dlpi_phnum` of them.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    // The kernel's vDSO is no file's; an object with text relocations may be having its
    // code written (made writable, relocated, made read-only again) by a loader at work.
    let name: &[u8] = if info.dlpi_name.is_null() {
        b""
    } else {
        // SAFETY: the loader's name of the object, a C string it keeps.
        unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }.to_bytes()
    };
    // SAFETY: the dynamic section is mapped with the object.
    if name.starts_with(b"linux-") || unsafe { has_text_relocations(base, phdrs) } {
        return 0;
    }
    const PAGE: usize = 4096;
    for p in phdrs {
        if p.p_type != libc::PT_LOAD || p.p_flags & libc::PF_W != 0 {
            continue;
        }
        // Whole pages inside the segment only: a page it shares with a writable one
        // (when the linker packed them) stays.
        let at = base.wrapping_add(p.p_vaddr as usize);
        let (start, end) = (
            (at + PAGE - 1) & !(PAGE - 1),
            (at + p.p_memsz as usize) & !(PAGE - 1),
        );
        if end <= start {
            continue;
        }
        // SAFETY: [start, end) is whole pages of a segment of a loaded object that is not
        // writable and never was (no text relocations): every page in it is the file's
        // page in the page cache, and nothing Rust or C owns is changed. MADV_DONTNEED
        // removes its page table entries; the next access faults the same pages in. The
        // loader's lock keeps the object mapped until this returns.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) }
            == 0
        {
            *released += end - start;
        }
    }
    0
}

/// Whether the object loaded at `base` with program headers `phdrs` has text relocations
/// (`DT_TEXTREL`, or `DF_TEXTREL` in `DT_FLAGS`); true when it cannot be told.
///
/// # Safety
///
/// `base` and `phdrs` must describe a loaded object, whose dynamic section is mapped.
unsafe fn has_text_relocations(base: usize, phdrs: &[libc::Elf64_Phdr]) -> bool {
    const DT_NULL: i64 = 0;
    const DT_TEXTREL: i64 = 22;
    const DT_FLAGS: i64 = 30;
    const DF_TEXTREL: u64 = 0x4;
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) else {
        // A static program: relocated by nothing.
        return false;
    };
    let mut entry = base.wrapping_add(dynamic.p_vaddr as usize) as *const [u64; 2];
    let count = dynamic.p_memsz as usize / std::mem::size_of::<[u64; 2]>();
    for _ in 0..count {
        // SAFETY: within the object's dynamic section (`count` entries of a tag and a
        // value), mapped while it is loaded; read unaligned to assume nothing.
        let [tag, value] = unsafe { entry.read_unaligned() };
        match tag as i64 {
            DT_NULL => return false,
            DT_TEXTREL => return true,
            DT_FLAGS if value & DF_TEXTREL != 0 => return true,
            _ => {}
        }
        // SAFETY: the next entry, still within `count`.
        entry = unsafe { entry.add(1) };
    }
    false
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
    /// The resident KiB of this process's mapping that starts at `start`.
    fn rss_of(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let head = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head)).skip(1);
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    /// Read-only data in the program's read-only segment.
    static TABLE: [u8; 64 << 10] = {
        let mut t = [0u8; 64 << 10];
        let mut i = 0;
        while i < t.len() {
            t[i] = (i % 251) as u8;
            i += 1;
        }
        t
    };

    /// Pointers the loader relocated at start, in a segment made read-only after.
    static NAMES: [&str; 3] = ["alpha", "beta", "gamma"];

    #[test]
    fn read_only_segments_are_let_go_and_come_back_the_same() {
        use std::os::fd::AsRawFd;
        let sum = |t: &[u8]| t.iter().map(|&b| u64::from(b)).sum::<u64>();
        let before = sum(std::hint::black_box(&TABLE[..]));
        // A file mapped read-only, not a loaded object's: not this function's to touch.
        let len = 1 << 20;
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; len]).unwrap();
        // SAFETY: a new mapping at an address the kernel picks, of a descriptor alive
        // through the call; nothing existing is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the `len` bytes mapped above, unmapped below after their last use.
        let mapped = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
        assert_eq!(sum(mapped), 7 * len as u64);
        let resident = rss_of(p as usize);
        // The program's code alone is megabytes.
        let released = release_read_only_segments();
        assert!(released >= 1024, "released {released} KiB");
        assert_eq!(sum(std::hint::black_box(&TABLE[..])), before);
        assert_eq!(std::hint::black_box(NAMES).concat(), "alphabetagamma");
        assert_eq!(rss_of(p as usize), resident);
        // SAFETY: the mapping made above; `mapped` is not used again.
        unsafe { libc::munmap(p, len) };
    }
}
