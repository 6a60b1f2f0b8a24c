#![no_main]
//! libFuzzer target `cloudwatch_response`: see `fuzz/harness.rs` and `scripts/fuzz`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::cloudwatch_response(data));
