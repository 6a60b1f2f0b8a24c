#![no_main]
//! libFuzzer target `agent_toml`: see `fuzz/harness.rs` and `scripts/fuzz`.

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::agent_toml(data));
