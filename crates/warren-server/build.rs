//! Fetches the web console's npm packages (`console/package-lock.json`, exactly as
//! locked) into `OUT_DIR`, so that `console.rs` embeds them: `warren serve` alone serves
//! the console, and no third-party code lives in the repository.
//!
//! npm runs only when the lockfile changed since the last fetch into this `OUT_DIR`
//! (its cache serves a repeated fetch without the network). `WARREN_CONSOLE=off` builds
//! without the console's packages: the console's page then says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// The files the console loads from the packages, as `(name served, path in node_modules)`.
const VENDORED: &[(&str, &str)] = &[
    ("xterm.mjs", "@xterm/xterm/lib/xterm.mjs"),
    ("xterm.css", "@xterm/xterm/css/xterm.css"),
    ("addon-fit.mjs", "@xterm/addon-fit/lib/addon-fit.mjs"),
];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let console = manifest.join("../../console");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets it"));
    println!("cargo:rerun-if-changed={}", console.display());
    println!("cargo:rerun-if-env-changed=WARREN_CONSOLE");
    let vendor = out.join("console-vendor");
    fs::create_dir_all(&vendor).expect("make OUT_DIR/console-vendor");
    if env::var("WARREN_CONSOLE").as_deref() == Ok("off") {
        for (name, _) in VENDORED {
            fs::write(vendor.join(name), b"").expect("write an empty asset");
        }
        println!("cargo:rustc-cfg=console_off");
        println!("cargo:rustc-check-cfg=cfg(console_off)");
        return;
    }
    println!("cargo:rustc-check-cfg=cfg(console_off)");
    let npm_dir = out.join("console-npm");
    fetch(&console, &npm_dir);
    for (name, from) in VENDORED {
        let src = npm_dir.join("node_modules").join(from);
        fs::copy(&src, vendor.join(name))
            .unwrap_or_else(|e| panic!("{} is not in the console's packages: {e}", src.display()));
    }
}

/// `npm ci` of `console`'s lockfile into `dir`, unless `dir` already has that lockfile's
/// packages.
fn fetch(console: &Path, dir: &Path) {
    let lock = fs::read(console.join("package-lock.json")).expect("read console/package-lock.json");
    let stamp = dir.join("installed-lock.json");
    if fs::read(&stamp).ok().as_deref() == Some(&lock[..]) {
        return;
    }
    fs::create_dir_all(dir).expect("make OUT_DIR/console-npm");
    for f in ["package.json", "package-lock.json"] {
        fs::copy(console.join(f), dir.join(f)).expect("copy the console's package files");
    }
    let status = Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--loglevel=error",
        ])
        .current_dir(dir)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "`npm ci` of the web console's packages failed ({s}): the npm registry must be \
             reachable once (its cache serves later builds); or build with WARREN_CONSOLE=off \
             for a binary without the console"
        ),
        Err(e) => panic!(
            "cannot run npm ({e}) to fetch the web console's packages: install Node.js and \
             npm (Debian: apt-get install npm), or build with WARREN_CONSOLE=off for a binary \
             without the console"
        ),
    }
    fs::write(&stamp, &lock).expect("record the installed lockfile");
}
