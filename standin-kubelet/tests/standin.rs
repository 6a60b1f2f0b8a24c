//! The stand-in through its command line: it says it is a stand-in, serves /healthz on the port
//! kubelet's flag names, and changes mode over HTTP. (This integration test also makes Cargo build
//! the binary itself in a workspace test run, which the agent's tests then start.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STANDIN: &str = env!("CARGO_BIN_EXE_standin-kubelet");

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `METHOD path` against 127.0.0.1:port → (status line, body); None while nothing listens.
fn call(port: u16, method: &str, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

#[test]
fn help_says_it_is_a_stand_in() {
    let out = Command::new(STANDIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT kubelet"));
}

#[test]
fn serves_healthz_and_turns_unhealthy_on_request() {
    let port = free_port();
    let child = Command::new(STANDIN)
        .args([
            "--healthz-port",
            &port.to_string(),
            "--kubeconfig=/nonexistent",
            "--node-labels=a=b",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start the stand-in");
    let _running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(r) = call(port, "GET", "/healthz") {
            break r;
        }
        assert!(Instant::now() < deadline, "no /healthz on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(first.0.contains(" 200 "), "{first:?}");
    assert_eq!(first.1, "ok");
    let set = call(port, "POST", "/standin/mode/unhealthy").expect("set mode");
    assert!(set.0.contains(" 200 "), "{set:?}");
    let after = call(port, "GET", "/healthz").expect("healthz");
    assert!(after.0.contains(" 500 "), "{after:?}");
    assert!(after.1.contains("STAND-IN"), "{after:?}");
}
