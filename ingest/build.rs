//! Link arguments of `imip-ingest`, which runs once per mail, so whatever its
//! start-up saves counts (bench/README.md):
//!
//! - a position-dependent executable: a PIE spends most of its start-up
//!   applying ~36,000 load-time relocations; without PIE the linker resolves
//!   them once, at build time (bench/results: start-up cost roughly halved);
//! - the functions a run executes first and together in `.text`
//!   (`hot-symbols.txt`, written by `hot-symbols.sh`): the kernel maps code 16
//!   pages per page fault where it is contiguous, so a run touches a few
//!   64 KiB windows of code instead of ~40 spread over 3 MiB. The option is
//!   lld's, the linker Rust uses for x86_64-unknown-linux-gnu (hence only
//!   there); names that no longer exist are ignored.
//!
//! Only this binary is affected.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    println!("cargo:rustc-link-arg-bins=-no-pie");
    let var = |v: &str| std::env::var(v).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ARCH") == "x86_64" && var("CARGO_CFG_TARGET_ENV") == "gnu" {
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={dir}/hot-symbols.txt");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
