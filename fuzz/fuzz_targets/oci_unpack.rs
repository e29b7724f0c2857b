//! The OCI layer unpacker on hostile tar streams. It runs as host root on untrusted
//! archives, so beyond never panicking it must never write outside its destination:
//! after every input, everything under the scratch root is inside `dest` except the
//! decoy the test put beside it, and the decoy is unchanged.
//!
//! Half the inputs are raw bytes (the tar parser's own robustness); the other half are
//! well-formed tar headers built from arbitrary entries whose names and link targets
//! come from an alphabet rich in `..`, `/`, whiteout prefixes and names of earlier
//! entries, which is where path tricks live.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use warren_runtime::oci::unpack::{unpack, Budget, Limits, Options};

#[derive(Arbitrary, Debug)]
struct Entry {
    kind: u8,
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u16,
    uid: u32,
    data: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    Entries(Vec<Entry>),
}

/// Path pieces the fuzzer combines: each byte of a name picks one.
const PIECES: &[&str] = &[
    "a",
    "b",
    "..",
    ".",
    "/",
    "etc",
    "passwd",
    ".wh.",
    ".wh..wh..opq",
    "decoy",
    "../decoy",
    "/tmp",
    "lnk",
    "dir/",
    "//",
    "\u{0}",
    "x\\y",
    "…",
];

fn path_of(bytes: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for b in bytes.iter().take(12) {
        p.extend_from_slice(PIECES[*b as usize % PIECES.len()].as_bytes());
    }
    p.truncate(99);
    p
}

fn build(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries.iter().take(64) {
        let mut h = tar::Header::new_old();
        let kind = match e.kind % 7 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            3 => tar::EntryType::Link,
            4 => tar::EntryType::Char,
            5 => tar::EntryType::Fifo,
            _ => tar::EntryType::Block,
        };
        h.set_entry_type(kind);
        // Raw bytes, so that names the builder would refuse (`..`, absolute) get in.
        let name = path_of(&e.name);
        h.as_old_mut().name[..name.len()].copy_from_slice(&name);
        let link = path_of(&e.link);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(&link);
        h.set_mode(u32::from(e.mode) & 0o7777);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.uid));
        let data = if kind == tar::EntryType::Regular {
            &e.data[..e.data.len().min(4096)]
        } else {
            &[][..]
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Every path under `root`, without following links.
fn walk(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        out.push(p.clone());
        if is_dir {
            walk(&p, out);
        }
    }
}

fuzz_target!(|input: Input| {
    let bytes = match &input {
        Input::Raw(b) => b.clone(),
        Input::Entries(e) => build(e),
    };
    let scratch = tempfile::tempdir().unwrap();
    let dest = scratch.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let decoy = scratch.path().join("decoy");
    std::fs::File::create(&decoy)
        .unwrap()
        .write_all(b"decoy")
        .unwrap();
    let mut budget = Budget::new(Limits {
        max_bytes: 8 << 20,
        max_entries: 10_000,
    });
    let opts = Options {
        id_base: None,
        keep_setid: false,
    };
    let _ = unpack(&bytes[..], &dest, opts, &mut budget);
    let mut all = Vec::new();
    walk(scratch.path(), &mut all);
    for p in &all {
        assert!(
            p.starts_with(&dest) || *p == decoy,
            "written outside the destination: {}",
            p.display()
        );
    }
    let meta = std::fs::symlink_metadata(&decoy).unwrap();
    assert!(meta.is_file() && meta.len() == 5, "the decoy was replaced");
    assert_eq!(std::fs::read(&decoy).unwrap(), b"decoy");
});
