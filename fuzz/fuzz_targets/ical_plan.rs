//! Fuzz target `ical_plan`: see `imipflow_fuzz::ical_plan` (fuzz/src/harness.rs) for
//! the input format and the invariants checked.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imipflow_fuzz::ical_plan(data));
