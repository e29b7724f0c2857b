//! What this process was linked with: its dynamic loader and the shared libraries the
//! loader mapped.
//!
//! A process started inside a sandbox from this same binary (the agent of an OCI
//! sandbox) would otherwise take the loader and libraries of the sandbox's root, which
//! may be another C library (musl), an older glibc than the binary was built for, or
//! none at all (a static image). Run through the loader found here, with the libraries
//! found here beside it, it needs nothing of the root.

use std::ffi::{c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The loader and libraries of this process, as the dynamic loader opened them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Linked {
    /// The program's interpreter (`PT_INTERP`), as the binary names it; `None` for a
    /// static binary.
    pub interpreter: Option<PathBuf>,
    /// Every other loaded object with a file: the path the loader opened it by (the
    /// name it was asked for, under the directory it was found in, so a library's file
    /// name is the name a binary asks for it by, not a symlink's target).
    pub libraries: Vec<PathBuf>,
}

/// The loader and libraries of this process (including any loaded since it started).
pub fn linked() -> Linked {
    let mut out = Linked::default();
    // SAFETY: `each` only reads the entries dl_iterate_phdr hands it, for the duration
    // of the call, and writes to the `Linked` passed as its data, which outlives the
    // call; the loader holds its lock meanwhile, so no object is unmapped under it.
    unsafe {
        libc::dl_iterate_phdr(Some(each), (&mut out as *mut Linked).cast::<c_void>());
    }
    if let Some(interp) = &out.interpreter {
        out.libraries.retain(|l| l != interp);
    }
    out
}

/// One loaded object: the program itself (empty name) gives its interpreter, a named one
/// its path; the vDSO has no path and is skipped.
unsafe extern "C" fn each(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid entry and our `Linked` (see `linked`).
    let (info, out) = unsafe { (&*info, &mut *data.cast::<Linked>()) };
    if info.dlpi_name.is_null() {
        return 0;
    }
    // SAFETY: a non-null dlpi_name is a NUL-terminated string the loader keeps.
    let name = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
    if name.is_empty() {
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers of the mapped program.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        if let Some(h) = headers.iter().find(|h| h.p_type == libc::PT_INTERP) {
            let at = (info.dlpi_addr + h.p_vaddr) as *const libc::c_char;
            // SAFETY: PT_INTERP's segment is mapped (it lies in the first loaded segment)
            // and holds the interpreter's NUL-terminated path.
            let interp = unsafe { CStr::from_ptr(at) }.to_bytes();
            out.interpreter = Some(PathBuf::from(OsStr::from_bytes(interp)));
        }
    } else if name.first() == Some(&b'/') {
        out.libraries.push(PathBuf::from(OsStr::from_bytes(name)));
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_loader_and_the_c_library() {
        let l = linked();
        let interp = l.interpreter.expect("a dynamically linked test binary");
        assert!(interp.is_absolute() && interp.exists(), "{interp:?}");
        assert!(
            interp
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ld-"),
            "{interp:?}"
        );
        assert!(
            l.libraries.iter().any(|p| p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("libc.so")),
            "{:?}",
            l.libraries
        );
        assert!(l.libraries.iter().all(|p| p.is_absolute() && p.exists()));
        assert!(!l.libraries.contains(&interp));
    }
}
