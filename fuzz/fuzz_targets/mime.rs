//! Fuzz target `mime`: see `imipflow_fuzz::mime` (fuzz/src/harness.rs) for
//! the input format and the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imipflow_fuzz::mime(data));
