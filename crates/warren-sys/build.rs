//! Compiles the seccomp policy, `seccomp/default.json`, to the BPF program the crate
//! installs (`$OUT_DIR/default_policy.rs`): a policy that does not compile fails the
//! build, and no process pays for the compile as it starts.

#[path = "src/seccomp/compile.rs"]
mod compile;

use std::fmt::Write as _;

fn main() {
    println!("cargo:rerun-if-changed=seccomp/default.json");
    println!("cargo:rerun-if-changed=src/seccomp/compile.rs");
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Only the x86-64 policy has been reviewed; elsewhere the crate answers that there is
    // none, and the program is empty.
    let program = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => {
            let json = std::fs::read("seccomp/default.json").expect("read seccomp/default.json");
            compile::compile(&json).unwrap_or_else(|e| panic!("seccomp/default.json: {e}"))
        }
        _ => Vec::new(),
    };
    let mut src = String::from("&[\n");
    for i in &program {
        writeln!(
            src,
            "    sock_filter {{ code: {:#06x}, jt: {}, jf: {}, k: {:#010x} }},",
            i.code, i.jt, i.jf, i.k
        )
        .expect("write to a String");
    }
    src.push(']');
    std::fs::write(out.join("default_policy.rs"), src).expect("write default_policy.rs");
}
