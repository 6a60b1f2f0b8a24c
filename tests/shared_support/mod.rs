//! Pieces several test harnesses need alike: the stand-in kubelet binary (a STAND-IN for
//! kubelet, not kubelet), free loopback ports, and an operator's SDK configuration against the
//! devstack. Each `*_support` module includes this file with `#[path]` and re-exports what it
//! uses, so the tests keep importing from their own harness.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Builds the `standin-kubelet` workspace member once per test binary and returns its path
/// (another package, so Cargo gives no `CARGO_BIN_EXE_` for it). `STANDIN_KUBELET_BIN` names a
/// prebuilt one instead (scripts/test points it at the one the workspace test build makes).
pub fn standin_binary() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(prebuilt) = std::env::var_os("STANDIN_KUBELET_BIN").map(PathBuf::from) {
            assert!(
                prebuilt.is_file(),
                "STANDIN_KUBELET_BIN={} does not exist: build it (cargo build -p standin-kubelet) or unset it",
                prebuilt.display()
            );
            return prebuilt;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args([
                "build",
                "--offline",
                "-q",
                "-p",
                "standin-kubelet",
                "--message-format=json",
            ])
            .output()
            .expect("run cargo build -p standin-kubelet");
        assert!(
            out.status.success(),
            "cargo build -p standin-kubelet failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The artifact message names the executable wherever the target dir is.
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["reason"] == "compiler-artifact"
                && v["target"]["name"] == "standin-kubelet"
                && let Some(exe) = v["executable"].as_str()
            {
                return PathBuf::from(exe);
            }
        }
        panic!("cargo build did not report the standin-kubelet executable:\n{stdout}");
    })
    .clone()
}

/// A TCP port nothing listens on right now.
/// A port free now, picked below the kernel's ephemeral range: a port that `bind(0)` could hand
/// out would be free to every other test's servers until its user binds it (a devstack took one
/// such port from under a container's kubelet once).
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let start = low.saturating_sub(12_000).max(1024);
    let span = u64::from(low.saturating_sub(start).max(1));
    for i in 0..200u64 {
        let port = start + (std::hash::RandomState::new().hash_one(i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// SDK config signed with the devstack's admin key: an operator's own tooling (CreateActivation,
/// DescribeInstanceInformation), not the agent.
pub fn admin_sdk_config(ds: &hybrid_devstack::Devstack, region: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(&ds.url)
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new(
                    hybrid_devstack::auth::ADMIN_ACCESS_KEY_ID,
                    hybrid_devstack::auth::ADMIN_SECRET_ACCESS_KEY,
                    None,
                    None,
                    "test-admin",
                ),
            ),
        )
        .build()
}
