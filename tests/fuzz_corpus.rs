//! Replays the checked-in fuzz corpus (`fuzz/corpus/<target>/`) on stable, through the same
//! entry points as the libFuzzer targets (`fuzz/harness.rs`): every input a fuzzing run kept,
//! and every crash it found once fixed, stays a test. `scripts/fuzz` runs the real fuzzers.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::PathBuf;

/// Runs every file of `fuzz/corpus/<target>/` and fails naming each input that panicked.
fn replay(target: &str) {
    let (_, run) = harness::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target} in fuzz/harness.rs"));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} holds no inputs", dir.display());
    let mut failed = Vec::new();
    for input in &inputs {
        let data = std::fs::read(input).expect("read corpus input");
        if std::panic::catch_unwind(|| run(&data)).is_err() {
            failed.push(input.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs panicked (reproduce with `scripts/fuzz {target} 0 FILE`):\n{}",
        failed.len(),
        inputs.len(),
        failed.join("\n")
    );
}

#[test]
fn every_target_has_a_corpus_test() {
    let tested = [
        "agent_toml",
        "nodeconfig",
        "journal",
        "spool",
        "ssm_response",
        "iam_ra_response",
        "cloudwatch_response",
    ];
    let targets: Vec<&str> = harness::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(targets, tested);
}

#[test]
fn agent_toml() {
    replay("agent_toml");
}

#[test]
fn nodeconfig() {
    replay("nodeconfig");
}

#[test]
fn journal() {
    replay("journal");
}

#[test]
fn spool() {
    replay("spool");
}

#[test]
fn ssm_response() {
    replay("ssm_response");
}

#[test]
fn iam_ra_response() {
    replay("iam_ra_response");
}

#[test]
fn cloudwatch_response() {
    replay("cloudwatch_response");
}
