//! The disk walk's memory does not grow with the tree: a sandbox that makes a huge
//! directory must not make the daemon, which measures its layer, grow with it.
//!
//! A test binary of its own, because it reads the process's peak resident memory.

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap()
}

#[test]
fn walking_a_huge_directory_takes_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide");
    std::fs::create_dir(&wide).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(wide.join(format!("a-file-with-a-longish-name-{i}"))).unwrap();
    }
    // Writing 5 resets the peak (VmHWM) to the current resident size.
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        warren_testkit::skip(
            "walking_a_huge_directory_takes_constant_memory",
            "this kernel cannot reset the peak resident size",
        );
        return;
    }
    let before = status_kib("VmRSS:");
    let bytes = warren_runtime::template::dir_size(dir.path());
    let grew = status_kib("VmHWM:").saturating_sub(before);
    assert!(bytes > 0);
    // One open directory's buffer and a path or two; a list of 100,000 paths would be
    // about 10 MiB.
    assert!(
        grew < 4 << 10,
        "the walk grew the process by {grew} KiB at its peak"
    );
}
