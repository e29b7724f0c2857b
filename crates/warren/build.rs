//! Links GCC's unwinder into the binary (`libgcc_eh.a`, as `gcc -static-libgcc` does)
//! rather than loading `libgcc_s.so.1` at every start.
//!
//! Rust's standard library takes its unwinder from `libgcc_s` on glibc targets. Loading
//! it costs every start of `warren` (each CLI command, each `warren run`) some 0.2 ms on
//! this kind of host: one more library to map and relocate, and its constructor probes
//! the CPU with `cpuid`, which a virtual machine traps. Linked from the static archive
//! ahead of the standard library, the unwinder's symbols are defined before `libgcc_s`
//! is reached, and the linker (`--as-needed`) drops it. Unwinding and backtraces work
//! as before: the static unwinder finds the binary's unwind tables through
//! `dl_iterate_phdr`, as it does in any C++ program linked with `-static-libgcc`.

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    // A static build (`crt-static`) links the static unwinder already.
    let crt_static = var("CARGO_CFG_TARGET_FEATURE")
        .split(',')
        .any(|f| f == "crt-static");
    if gnu && !crt_static {
        println!("cargo:rustc-link-lib=static=gcc_eh");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
