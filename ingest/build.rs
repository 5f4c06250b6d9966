//! Links `imip-ingest` as a position-dependent executable. It runs once per
//! mail, and a PIE spends most of its start-up applying ~36,000 load-time
//! relocations; without PIE the linker resolves them once, at build time
//! (bench/results: start-up cost roughly halved). Only this binary is affected.
fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
