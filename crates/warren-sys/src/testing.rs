//! What this crate's tests share.

/// Runs `check` in a forked copy of the test process, which has one thread (the harness's
/// others stay behind) and whose process-wide settings die with it; fails the test if
/// `check` panicked there.
pub(crate) fn in_a_forked_process(check: impl FnOnce() + std::panic::UnwindSafe) {
    // SAFETY: the child runs `check` on its one thread and leaves with _exit, running
    // nothing of the harness's; glibc's fork leaves the allocator usable in the child.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            let ok = std::panic::catch_unwind(check).is_ok();
            // SAFETY: leaves the forked child at once, with its verdict.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            let status = nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(
                status,
                nix::sys::wait::WaitStatus::Exited(child, 0),
                "the check failed in the forked process (its panic is above)"
            );
        }
    }
}
