#![no_main]
//! libFuzzer target `iam_ra_response`: see `fuzz/harness.rs` and `scripts/fuzz`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::iam_ra_response(data));
