//! Prints `hybrid-agent.service` as the daemon renders it, for `systemd/hybrid-agent.service`:
//! `cargo run --example render_agent_unit > systemd/hybrid-agent.service` (tests/supervise_units
//! keeps the two equal).
use std::io::Write;
use std::path::Path;

fn main() {
    let unit = hybrid_agent::daemon::unit::hybrid_agent_service(Path::new(
        hybrid_agent::daemon::unit::AGENT_BINARY,
    ));
    let mut out = std::io::stdout().lock();
    if out.write_all(unit.content.as_bytes()).is_err() {
        std::process::exit(1);
    }
}
