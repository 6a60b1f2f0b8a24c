//! Outage windows: during one, calls fail at the network level — on new connections (refused
//! at accept) and on connections kept alive from before (dropped without a response) — and
//! afterwards the same clients work again.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use aws_sdk_cloudwatchlogs::error::SdkError;

fn start_outage(ds: &hybrid_devstack::Devstack) {
    // Long enough never to end by itself during the test; ended explicitly below.
    ds.state.faults_mut().outage_until = Some(Instant::now() + Duration::from_secs(600));
}

fn end_outage(ds: &hybrid_devstack::Devstack) {
    ds.state.faults_mut().outage_until = None;
}

/// Reads one HTTP/1.1 response with a Content-Length body from `s`; `None` if the connection
/// ends first.
fn read_response(s: &mut std::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some(head + &String::from_utf8_lossy(&body))
}

#[test]
fn a_kept_alive_connection_is_dropped_without_a_response_during_an_outage() {
    let ds = common::devstack();
    let mut s = std::net::TcpStream::connect(ds.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let request = format!(
        "GET /_devstack/health HTTP/1.1\r\nHost: {}\r\n\r\n",
        ds.addr
    );

    s.write_all(request.as_bytes()).expect("send");
    let first = read_response(&mut s).expect("a response before the outage");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    start_outage(&ds);
    // Same connection, accepted before the outage began.
    let _ = s.write_all(request.as_bytes());
    assert_eq!(
        read_response(&mut s),
        None,
        "no HTTP response on the kept-alive connection during the outage"
    );

    // New connections are refused too, until the outage ends.
    let mut fresh = std::net::TcpStream::connect(ds.addr).expect("the listener still accepts");
    fresh
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let _ = fresh.write_all(request.as_bytes());
    assert_eq!(read_response(&mut fresh), None);

    end_outage(&ds);
    let mut after = std::net::TcpStream::connect(ds.addr).expect("connect");
    after
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    after.write_all(request.as_bytes()).expect("send");
    assert!(
        read_response(&mut after)
            .expect("a response after the outage")
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_calls_fail_with_a_network_error_during_an_outage_and_work_after() {
    let ds = common::devstack();
    let logs = aws_sdk_cloudwatchlogs::Client::new(&common::admin_config(&ds.url).await);
    // A first call leaves a pooled keep-alive connection behind.
    logs.create_log_group()
        .log_group_name("/outage")
        .send()
        .await
        .expect("before the outage");

    start_outage(&ds);
    let err = logs
        .describe_log_groups()
        .send()
        .await
        .expect_err("during the outage");
    assert!(
        matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_)
        ),
        "a network-level failure, not a service answer: {err:?}"
    );

    end_outage(&ds);
    let out = logs
        .describe_log_groups()
        .send()
        .await
        .expect("after the outage");
    assert_eq!(out.log_groups().len(), 1);
}
