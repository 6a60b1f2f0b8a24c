//! `hybrid-agent run` under `Type=notify`: it tells systemd READY=1 once its tasks run, feeds the
//! watchdog at half of `WatchdogSec`, and says STOPPING=1 on SIGTERM. systemd's side is played by
//! a datagram socket at `$NOTIFY_SOCKET`, which is all the protocol is.

mod identity_support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use identity_support::*;

/// Collects notify messages until `want` has been seen or `limit` passes.
fn receive_until(sock: &UnixDatagram, want: &str, limit: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return true;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    false
}

/// Kills the daemon if the test fails before stopping it: a failed run must not leave it behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn run_notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let out = host.join(&ds, Provider::Ssm, &["--skip", "install,render,start,wait"]);
    assert!(out.status.success(), "join failed:\n{}", text(&out));

    let sock_path = host.scratch.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");

    let log = host.scratch.path().join("daemon.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut child = KillOnDrop(
        host.command(&["run"])
            .env("NOTIFY_SOCKET", &sock_path)
            // WatchdogSec=2: the agent must pet it about every second.
            .env("WATCHDOG_USEC", "2000000")
            .stdout(std::process::Stdio::from(file.try_clone().expect("clone")))
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .expect("spawn run"),
    );
    let pid = child.0.id();

    let mut seen = Vec::new();
    let ready = receive_until(&sock, "READY=1", Duration::from_secs(30), &mut seen);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ready,
        "no READY=1 within 30 s; got {seen:?}\n{}",
        log_text()
    );
    let pets_before = seen
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        receive_until(&sock, "WATCHDOG=1", Duration::from_secs(10), &mut seen),
        "no watchdog ping; got {seen:?}"
    );
    assert!(
        receive_until(&sock, "WATCHDOG=1", Duration::from_secs(10), &mut seen),
        "only one watchdog ping; got {seen:?}"
    );
    let pets = seen
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pets >= pets_before + 2);

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    assert!(
        receive_until(&sock, "STOPPING=1", Duration::from_secs(30), &mut seen),
        "no STOPPING=1 after SIGTERM; got {seen:?}"
    );
    let status = child.0.wait().expect("wait");
    assert!(status.success(), "run exited {status:?}\n{}", log_text());
}
