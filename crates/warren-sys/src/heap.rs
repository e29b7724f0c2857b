//! Memory a process holds that it can give back once idle: its heap's free pages, and
//! the page tables of the files it maps only to read.
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

/// Lets go of every page this process maps of a file it only reads (its code, its
/// read-only data, the libraries'), and with them of the page tables that mapped them;
/// the next access maps the same pages of the page cache again, as after the kernel
/// reclaimed them. A mapping that cannot be written but holds a private copy of a page
/// (data relocated before it was made read-only) is left alone. Returns the KiB that
/// were mapped.
///
/// Call it only while no thread of the process loads a library (whose loader may
/// relocate a read-only mapping it is making, between the look and the advice).
pub fn release_read_only_mappings() -> std::io::Result<u64> {
    // Read a line at a time: the whole text (some 40 KiB) would grow the heap itself.
    let smaps = std::fs::File::open("/proc/self/smaps")?;
    let mut released = 0;
    for m in read_only_file_mappings(std::io::BufReader::with_capacity(4096, smaps)) {
        // SAFETY: the range is one whole mapping of this process as its own smaps lists
        // it: of a file, not writable, with no anonymous page, so every page in it is
        // the file's page in the page cache and nothing Rust or C owns is changed.
        // MADV_DONTNEED removes the range's page table entries; the next access faults
        // the same pages in again. A range unmapped meanwhile is simply not mapped.
        let r = unsafe { libc::madvise(m.start as *mut libc::c_void, m.len, libc::MADV_DONTNEED) };
        if r == 0 {
            released += m.rss_kib;
        }
    }
    Ok(released)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mapping {
    start: usize,
    len: usize,
    rss_kib: u64,
}

/// The mappings of a `/proc/PID/smaps` text that are of a file, cannot be written, and
/// hold pages none of which is anonymous. A read that fails ends the list there.
fn read_only_file_mappings(mut smaps: impl std::io::BufRead) -> Vec<Mapping> {
    let mut out = Vec::new();
    // The mapping being read, if it qualifies so far, and its anonymous KiB.
    let mut current: Option<(Mapping, u64)> = None;
    let mut finish = |m: Option<(Mapping, u64)>| {
        if let Some((m, 0)) = m {
            if m.rss_kib > 0 {
                out.push(m);
            }
        }
    };
    let mut line = String::new();
    loop {
        line.clear();
        if !matches!(smaps.read_line(&mut line), Ok(1..)) {
            break;
        }
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some(field) = first.strip_suffix(':') {
            let mut kib = || words.next().and_then(|v| v.parse::<u64>().ok());
            if let Some((m, anon)) = current.as_mut() {
                match field {
                    "Rss" => m.rss_kib = kib().unwrap_or(0),
                    // Unknown means kept.
                    "Anonymous" => *anon = kib().unwrap_or(1),
                    _ => {}
                }
            }
            continue;
        }
        finish(current.take());
        let Some((lo, hi)) = first.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
        else {
            continue;
        };
        let perms = words.next().unwrap_or("");
        let inode = words
            .nth(2)
            .and_then(|i| i.parse::<u64>().ok())
            .unwrap_or(0);
        if perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-') && inode != 0 && hi > lo
        {
            // Anonymous until its line is read: a mapping whose line is missing is kept.
            current = Some((
                Mapping {
                    start: lo,
                    len: hi - lo,
                    rss_kib: 0,
                },
                1,
            ));
        }
    }
    finish(current.take());
    out
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

    /// A private mapping of `file`'s first `len` bytes.
    fn map(file: &std::fs::File, len: usize, prot: libc::c_int) -> *mut u8 {
        use std::os::fd::AsRawFd;
        // SAFETY: a new mapping at an address the kernel picks, of a descriptor that
        // lives through the call; nothing existing is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    #[test]
    fn read_only_file_pages_are_let_go_and_come_back_the_same() {
        let len = 4 << 20;
        let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &content).unwrap();
        let ro = map(&file, len, libc::PROT_READ);
        // A read-only mapping with private copies in it, as a relocated library's
        // data is once the loader made it read-only: never let go of.
        let copied = map(&file, len, libc::PROT_READ | libc::PROT_WRITE);
        // SAFETY: both ranges are the `len` bytes mapped above, alive until the unmap
        // below; every access is in bounds and nothing else refers to them.
        let (ro_bytes, copied_bytes) = unsafe {
            for i in (0..len).step_by(4096) {
                copied.add(i).write(0xAA);
            }
            assert_eq!(libc::mprotect(copied.cast(), len, libc::PROT_READ), 0);
            (
                std::slice::from_raw_parts(ro, len),
                std::slice::from_raw_parts(copied, len),
            )
        };
        let sum: u64 = ro_bytes.iter().step_by(4096).map(|&b| u64::from(b)).sum();
        assert!(sum > 0);
        assert!(
            rss_of(ro as usize) >= 4 << 10,
            "the mapping was not faulted in"
        );
        let released = release_read_only_mappings().unwrap();
        assert!(released >= 4 << 10, "released {released} KiB");
        assert_eq!(rss_of(ro as usize), 0);
        assert_eq!(ro_bytes, &content[..]);
        assert!(copied_bytes.iter().step_by(4096).all(|&b| b == 0xAA));
        assert_eq!(copied_bytes[1], content[1]);
        // SAFETY: the two mappings made above; the slices into them are not used again.
        unsafe {
            libc::munmap(ro.cast(), len);
            libc::munmap(copied.cast(), len);
        }
    }

    #[test]
    fn only_unwritable_file_mappings_without_copies_are_chosen() {
        let smaps = "\
55f0-5600 r--p 00000000 fd:01 1234 /usr/bin/warren
Rss:                  16 kB
Anonymous:             0 kB
VmFlags: rd mr mw me
5600-5700 r-xp 00010000 fd:01 1234 /usr/bin/warren
Rss:                  64 kB
Anonymous:             0 kB
5700-5710 r--p 00110000 fd:01 1234 /usr/bin/warren
Rss:                  16 kB
Anonymous:            16 kB
5710-5720 rw-p 00120000 fd:01 1234 /usr/bin/warren
Rss:                   8 kB
Anonymous:             0 kB
5720-5730 r--p 00000000 fd:01 99 /usr/lib/libm.so
Rss:                   0 kB
Anonymous:             0 kB
7ff0-7ff2 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
7ff4-7ff6 r--p 00000000 fd:01 77 /usr/lib/libc.so
Rss:                   8 kB
";
        let got = read_only_file_mappings(smaps.as_bytes());
        let want = [(0x55f0, 0x10, 16), (0x5600, 0x100, 64)];
        let got: Vec<_> = got.iter().map(|m| (m.start, m.len, m.rss_kib)).collect();
        // The writable, copied, empty, anonymous and incompletely described ones stay.
        assert_eq!(got, want);
    }
}
