//! CloudWatch Logs of the devstack, driven with the official aws-sdk-cloudwatchlogs client:
//! every PutLogEvents limit at its edge (exactly at the limit accepted, one over rejected), the
//! per-event rejections, pagination as the SDK paginators use it, and persistence.

mod common;

use std::time::SystemTime;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata;
use aws_sdk_cloudwatchlogs::types::{InputLogEvent, OrderBy};
use hybrid_devstack::{Config, Devstack};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

fn event(timestamp: i64, message: impl Into<String>) -> InputLogEvent {
    InputLogEvent::builder()
        .timestamp(timestamp)
        .message(message)
        .build()
        .expect("event has timestamp and message")
}

async fn client(ds: &Devstack) -> Client {
    Client::new(&common::admin_config(&ds.url).await)
}

async fn group_and_stream(logs: &Client, group: &str, stream: &str) {
    logs.create_log_group()
        .log_group_name(group)
        .send()
        .await
        .expect("CreateLogGroup");
    logs.create_log_stream()
        .log_group_name(group)
        .log_stream_name(stream)
        .send()
        .await
        .expect("CreateLogStream");
}

async fn put(
    logs: &Client,
    group: &str,
    stream: &str,
    events: Vec<InputLogEvent>,
) -> aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsOutput {
    logs.put_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .set_log_events(Some(events))
        .send()
        .await
        .expect("PutLogEvents accepted")
}

/// Sends a batch that must fail; returns (error code, message).
async fn put_err(
    logs: &Client,
    group: &str,
    stream: &str,
    events: Vec<InputLogEvent>,
) -> (String, String) {
    let err = logs
        .put_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .set_log_events(Some(events))
        .send()
        .await
        .expect_err("PutLogEvents must be rejected");
    let svc = err.into_service_error();
    (
        svc.code().unwrap_or_default().to_string(),
        svc.message().unwrap_or_default().to_string(),
    )
}

/// Every stored message of a stream, oldest first, read through the SDK paginator.
async fn stored(logs: &Client, group: &str, stream: &str) -> Vec<(i64, String)> {
    let pages: Vec<_> = logs
        .get_log_events()
        .log_group_name(group)
        .log_stream_name(stream)
        .start_from_head(true)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::new();
    for page in pages {
        for e in page.expect("GetLogEvents page").events() {
            out.push((
                e.timestamp().unwrap_or_default(),
                e.message().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

/// `n` messages whose UTF-8 sizes plus 26 bytes each add up to exactly `total` bytes. The
/// first message is made of two-byte characters so that bytes, not characters, must be counted.
fn messages_totalling(n: usize, total: usize) -> Vec<String> {
    let payload = total - 26 * n;
    let each = payload / n;
    let mut out: Vec<String> = (0..n).map(|_| "x".repeat(each)).collect();
    out[0] = "é".repeat(each / 2) + &"x".repeat(each % 2);
    let last = out.len() - 1;
    out[last].push_str(&"y".repeat(payload - each * n));
    assert_eq!(out.iter().map(|m| m.len() + 26).sum::<usize>(), total);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_exactly_1_mib_is_accepted_and_one_byte_more_rejected() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/edge/bytes", "s").await;
    let t = now_ms() - MINUTE;

    let at_limit = messages_totalling(100, 1_048_576);
    let out = put(
        &logs,
        "/edge/bytes",
        "s",
        at_limit.iter().map(|m| event(t, m.clone())).collect(),
    )
    .await;
    assert!(out.rejected_log_events_info().is_none());
    assert!(
        out.next_sequence_token().is_some_and(|t| !t.is_empty()),
        "a nextSequenceToken comes back"
    );

    let mut over = messages_totalling(100, 1_048_576);
    over[50].push('z');
    let (code, message) = put_err(
        &logs,
        "/edge/bytes",
        "s",
        over.into_iter().map(|m| event(t, m)).collect(),
    )
    .await;
    assert_eq!(code, "InvalidParameterException", "{message}");
    assert!(
        message.contains("1048577"),
        "the message names the batch size: {message}"
    );

    let kept = stored(&logs, "/edge/bytes", "s").await;
    assert_eq!(kept.len(), 100, "only the batch at the limit was stored");
    assert_eq!(
        kept[0].1, at_limit[0],
        "multi-byte messages come back intact"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_accepted_ten_thousand_and_one_rejected() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/edge/count", "s").await;
    let t = now_ms() - HOUR;
    let batch = |n: usize| {
        (0..n)
            .map(|i| event(t + i as i64, format!("e{i}")))
            .collect::<Vec<_>>()
    };

    put(&logs, "/edge/count", "s", batch(10_000)).await;
    let (code, message) = put_err(&logs, "/edge/count", "s", batch(10_001)).await;
    assert_eq!(code, "InvalidParameterException", "{message}");
    assert!(message.contains("10000"), "{message}");

    let (code, _) = put_err(&logs, "/edge/count", "s", Vec::new()).await;
    assert_eq!(
        code, "InvalidParameterException",
        "an empty batch is refused"
    );
    assert_eq!(stored(&logs, "/edge/count", "s").await.len(), 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_may_span_exactly_24_hours_but_not_a_millisecond_more() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/edge/span", "s").await;
    let first = now_ms() - 23 * HOUR;

    put(
        &logs,
        "/edge/span",
        "s",
        vec![event(first, "a"), event(first + DAY, "b")],
    )
    .await;
    let (code, message) = put_err(
        &logs,
        "/edge/span",
        "s",
        vec![event(first, "a"), event(first + DAY + 1, "b")],
    )
    .await;
    assert_eq!(code, "InvalidParameterException");
    assert!(message.contains("24 hours"), "{message}");
    assert_eq!(stored(&logs, "/edge/span", "s").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_batch_fails_as_a_whole() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/edge/order", "s").await;
    let t = now_ms() - MINUTE;
    let (code, message) = put_err(
        &logs,
        "/edge/order",
        "s",
        vec![event(t, "a"), event(t + 2, "b"), event(t + 1, "c")],
    )
    .await;
    assert_eq!(code, "InvalidParameterException");
    assert_eq!(
        message,
        "Log events in a single PutLogEvents request must be in chronological order."
    );
    assert!(
        stored(&logs, "/edge/order", "s").await.is_empty(),
        "nothing of a refused batch is stored"
    );
    // Equal timestamps are in order.
    put(
        &logs,
        "/edge/order",
        "s",
        vec![event(t, "a"), event(t, "b")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_and_too_new_events_are_rejected_per_event_and_the_rest_stored() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/edge/age", "s").await;
    // Minutes of margin around the 14-day edge: the devstack's clock moves on between here
    // and there (the exact edge is a unit test of the classifier).
    let old = now_ms() - 14 * DAY;
    let out = put(
        &logs,
        "/edge/age",
        "s",
        vec![
            event(old - 10 * MINUTE, "old1"),
            event(old - 5 * MINUTE, "old2"),
            event(old + 5 * MINUTE, "kept-old-edge"),
        ],
    )
    .await;
    let info = out
        .rejected_log_events_info()
        .expect("rejectedLogEventsInfo");
    assert_eq!(
        info.too_old_log_event_end_index(),
        Some(2),
        "exclusive end: two too-old events"
    );
    assert_eq!(info.too_new_log_event_start_index(), None);
    assert_eq!(info.expired_log_event_end_index(), None);

    let new = now_ms() + 2 * HOUR;
    let out = put(
        &logs,
        "/edge/age",
        "s",
        vec![
            event(new - 5 * MINUTE, "kept-new-edge"),
            event(new + 5 * MINUTE, "new1"),
            event(new + 10 * MINUTE, "new2"),
        ],
    )
    .await;
    let info = out
        .rejected_log_events_info()
        .expect("rejectedLogEventsInfo");
    assert_eq!(
        info.too_new_log_event_start_index(),
        Some(1),
        "inclusive start of the too-new events"
    );
    assert_eq!(info.too_old_log_event_end_index(), None);

    let kept: Vec<String> = stored(&logs, "/edge/age", "s")
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(kept, ["kept-old-edge", "kept-new-edge"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_the_retention_are_reported_expired() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/edge/retention", "s").await;
    logs.put_retention_policy()
        .log_group_name("/edge/retention")
        .retention_in_days(1)
        .send()
        .await
        .expect("PutRetentionPolicy");
    let now = now_ms();
    let out = put(
        &logs,
        "/edge/retention",
        "s",
        vec![
            event(now - DAY - HOUR, "expired"),
            event(now - HOUR, "fresh"),
        ],
    )
    .await;
    let info = out
        .rejected_log_events_info()
        .expect("rejectedLogEventsInfo");
    assert_eq!(info.expired_log_event_end_index(), Some(1));
    assert_eq!(info.too_old_log_event_end_index(), None);
    let kept: Vec<String> = stored(&logs, "/edge/retention", "s")
        .await
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(kept, ["fresh"]);

    let groups = logs
        .describe_log_groups()
        .log_group_name_prefix("/edge/retention")
        .send()
        .await
        .expect("DescribeLogGroups");
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(1));
    let bad = logs
        .put_retention_policy()
        .log_group_name("/edge/retention")
        .retention_in_days(2)
        .send()
        .await;
    assert_eq!(
        bad.expect_err("2 days is not a retention value")
            .into_service_error()
            .code(),
        Some("InvalidParameterException")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_groups_and_streams_are_resource_not_found() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    let err = logs
        .create_log_stream()
        .log_group_name("/nope")
        .log_stream_name("s")
        .send()
        .await
        .expect_err("no group");
    assert!(err.into_service_error().is_resource_not_found_exception());
    let (code, message) = put_err(&logs, "/nope", "s", vec![event(now_ms(), "x")]).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "ResourceNotFoundException",
            "The specified log group does not exist."
        )
    );

    logs.create_log_group()
        .log_group_name("/yes")
        .send()
        .await
        .expect("CreateLogGroup");
    let (code, message) = put_err(&logs, "/yes", "missing", vec![event(now_ms(), "x")]).await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "ResourceNotFoundException",
            "The specified log stream does not exist."
        )
    );
    let err = logs
        .get_log_events()
        .log_group_name("/yes")
        .log_stream_name("missing")
        .send()
        .await
        .expect_err("no stream");
    assert!(err.into_service_error().is_resource_not_found_exception());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_log_events_pages_forward_and_backward_and_the_paginator_terminates() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/pages", "s").await;
    let t = now_ms() - HOUR;
    put(
        &logs,
        "/pages",
        "s",
        (0..25).map(|i| event(t + i, format!("m{i:02}"))).collect(),
    )
    .await;
    let want: Vec<String> = (0..25).map(|i| format!("m{i:02}")).collect();

    // Forward with the SDK paginator: three pages of ≤10 and a final empty one whose token is
    // the one sent, which is what stops it.
    let pages: Vec<_> = logs
        .get_log_events()
        .log_group_name("/pages")
        .log_stream_name("s")
        .start_from_head(true)
        .limit(10)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let sizes: Vec<usize> = pages
        .iter()
        .map(|p| p.as_ref().expect("page").events().len())
        .collect();
    assert_eq!(sizes, [10, 10, 5, 0]);
    let got: Vec<String> = pages
        .iter()
        .flat_map(|p| {
            p.as_ref()
                .expect("page")
                .events()
                .iter()
                .filter_map(|e| e.message().map(str::to_string))
        })
        .collect();
    assert_eq!(got, want);

    // Without startFromHead the newest events come first; backward tokens walk to the start
    // and then repeat.
    let newest = logs
        .get_log_events()
        .log_group_name("/pages")
        .log_stream_name("s")
        .limit(10)
        .send()
        .await
        .expect("newest page");
    let msgs: Vec<&str> = newest.events().iter().filter_map(|e| e.message()).collect();
    assert_eq!(
        msgs,
        want[15..].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let mut token = newest
        .next_backward_token()
        .expect("backward token")
        .to_string();
    let mut earlier = Vec::new();
    loop {
        let page = logs
            .get_log_events()
            .log_group_name("/pages")
            .log_stream_name("s")
            .limit(10)
            .next_token(&token)
            .send()
            .await
            .expect("backward page");
        let next = page
            .next_backward_token()
            .expect("backward token")
            .to_string();
        let mut msgs: Vec<String> = page
            .events()
            .iter()
            .filter_map(|e| e.message().map(str::to_string))
            .collect();
        msgs.extend(earlier);
        earlier = msgs;
        if next == token {
            assert!(
                page.events().is_empty(),
                "the repeated token comes with an empty page"
            );
            break;
        }
        token = next;
    }
    assert_eq!(earlier, want[..15].to_vec());

    // A time window: startTime inclusive, endTime exclusive.
    let window = logs
        .get_log_events()
        .log_group_name("/pages")
        .log_stream_name("s")
        .start_time(t + 5)
        .end_time(t + 8)
        .start_from_head(true)
        .send()
        .await
        .expect("window");
    let msgs: Vec<&str> = window.events().iter().filter_map(|e| e.message()).collect();
    assert_eq!(msgs, ["m05", "m06", "m07"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_log_events_merges_streams_by_time_filters_and_paginates() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    group_and_stream(&logs, "/filter", "kubelet").await;
    logs.create_log_stream()
        .log_group_name("/filter")
        .log_stream_name("containerd")
        .send()
        .await
        .expect("second stream");
    logs.create_log_stream()
        .log_group_name("/filter")
        .log_stream_name("other")
        .send()
        .await
        .expect("third stream");
    let t = now_ms() - HOUR;
    put(
        &logs,
        "/filter",
        "kubelet",
        (0..10)
            .map(|i| event(t + 2 * i, format!("kubelet ERROR {i}")))
            .collect(),
    )
    .await;
    put(
        &logs,
        "/filter",
        "containerd",
        (0..10)
            .map(|i| event(t + 2 * i + 1, format!("containerd info {i}")))
            .collect(),
    )
    .await;
    put(&logs, "/filter", "other", vec![event(t, "other ERROR")]).await;

    let pages: Vec<_> = logs
        .filter_log_events()
        .log_group_name("/filter")
        .log_stream_names("kubelet")
        .log_stream_names("containerd")
        .start_time(t + 4)
        .end_time(t + 16)
        .limit(5)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let events: Vec<(i64, String, String)> = pages
        .iter()
        .flat_map(|p| {
            p.as_ref().expect("page").events().iter().map(|e| {
                (
                    e.timestamp().unwrap_or_default(),
                    e.log_stream_name().unwrap_or_default().to_string(),
                    e.message().unwrap_or_default().to_string(),
                )
            })
        })
        .collect();
    assert_eq!(pages.len(), 3, "12 events in pages of 5");
    assert_eq!(events.len(), 12);
    assert!(
        events.windows(2).all(|w| w[0].0 <= w[1].0),
        "merged in time order: {events:?}"
    );
    assert_eq!(
        events[0],
        (t + 4, "kubelet".to_string(), "kubelet ERROR 2".to_string())
    );
    assert!(events.iter().all(|e| e.1 != "other"));

    let errors = logs
        .filter_log_events()
        .log_group_name("/filter")
        .filter_pattern("ERROR -other")
        .send()
        .await
        .expect("FilterLogEvents with a pattern");
    assert_eq!(
        errors.events().len(),
        10,
        "every kubelet ERROR, none of the excluded stream's line"
    );
    assert!(errors.next_token().is_none());
    let ids: std::collections::BTreeSet<&str> = errors
        .events()
        .iter()
        .filter_map(|e| e.event_id())
        .collect();
    assert_eq!(ids.len(), 10, "event ids are unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_streams_prefix_order_limit_and_call_count() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    logs.create_log_group()
        .log_group_name("/describe")
        .send()
        .await
        .expect("CreateLogGroup");
    for s in ["a-1", "a-2", "b-1"] {
        logs.create_log_stream()
            .log_group_name("/describe")
            .log_stream_name(s)
            .send()
            .await
            .expect("CreateLogStream");
    }
    let t = now_ms() - HOUR;
    put(&logs, "/describe", "a-1", vec![event(t + 30, "x")]).await;
    put(&logs, "/describe", "a-2", vec![event(t + 10, "x")]).await;
    put(&logs, "/describe", "b-1", vec![event(t + 20, "x")]).await;
    let before = ds.state.call_count("logs", "DescribeLogStreams");

    let names = |out: &aws_sdk_cloudwatchlogs::operation::describe_log_streams::DescribeLogStreamsOutput| {
        out.log_streams().iter().filter_map(|s| s.log_stream_name().map(str::to_string)).collect::<Vec<_>>()
    };
    let prefixed = logs
        .describe_log_streams()
        .log_group_name("/describe")
        .log_stream_name_prefix("a-")
        .send()
        .await
        .expect("prefix");
    assert_eq!(names(&prefixed), ["a-1", "a-2"]);
    let stream = &prefixed.log_streams()[0];
    assert_eq!(
        (
            stream.first_event_timestamp(),
            stream.last_event_timestamp()
        ),
        (Some(t + 30), Some(t + 30))
    );
    assert!(
        stream
            .arn()
            .is_some_and(|a| a.ends_with(":log-group:/describe:log-stream:a-1")),
        "{:?}",
        stream.arn()
    );

    let by_time = logs
        .describe_log_streams()
        .log_group_name("/describe")
        .order_by(OrderBy::LastEventTime)
        .descending(true)
        .send()
        .await
        .expect("orderBy LastEventTime");
    assert_eq!(names(&by_time), ["a-1", "b-1", "a-2"]);

    let first = logs
        .describe_log_streams()
        .log_group_name("/describe")
        .limit(2)
        .send()
        .await
        .expect("page 1");
    assert_eq!(names(&first), ["a-1", "a-2"]);
    let second = logs
        .describe_log_streams()
        .log_group_name("/describe")
        .limit(2)
        .next_token(first.next_token().expect("more streams"))
        .send()
        .await
        .expect("page 2");
    assert_eq!(names(&second), ["b-1"]);
    assert!(second.next_token().is_none());

    let err = logs
        .describe_log_streams()
        .log_group_name("/describe")
        .order_by(OrderBy::LastEventTime)
        .log_stream_name_prefix("a")
        .send()
        .await
        .expect_err("prefix with LastEventTime");
    assert!(err.into_service_error().is_invalid_parameter_exception());
    assert_eq!(
        ds.state.call_count("logs", "DescribeLogStreams") - before,
        5,
        "every call is counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_groups_filters_by_prefix_and_reports_arns() {
    let ds = common::devstack();
    let logs = client(&ds).await;
    for g in ["/aws/eks/a", "/aws/eks/b", "/other"] {
        logs.create_log_group()
            .log_group_name(g)
            .send()
            .await
            .expect("CreateLogGroup");
    }
    let out = logs
        .describe_log_groups()
        .log_group_name_prefix("/aws/eks/")
        .send()
        .await
        .expect("DescribeLogGroups");
    let names: Vec<&str> = out
        .log_groups()
        .iter()
        .filter_map(|g| g.log_group_name())
        .collect();
    assert_eq!(names, ["/aws/eks/a", "/aws/eks/b"]);
    assert_eq!(
        out.log_groups()[0].arn(),
        Some("arn:aws:logs:us-west-2:123456789012:log-group:/aws/eks/a:*")
    );
    let bad = logs
        .create_log_group()
        .log_group_name("bad name!")
        .send()
        .await
        .expect_err("invalid name");
    assert!(bad.into_service_error().is_invalid_parameter_exception());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_streams_and_events_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = || Config {
        state_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let t = now_ms() - HOUR;
    {
        let ds = Devstack::spawn(config()).expect("start devstack");
        let logs = client(&ds).await;
        group_and_stream(&logs, "/persist/g", "node/kubelet").await;
        put(
            &logs,
            "/persist/g",
            "node/kubelet",
            vec![event(t, "first"), event(t + 1, "second ✓")],
        )
        .await;
        logs.put_retention_policy()
            .log_group_name("/persist/g")
            .retention_in_days(7)
            .send()
            .await
            .expect("retention");
    }
    let ds = Devstack::spawn(config()).expect("restart devstack");
    let logs = client(&ds).await;
    assert_eq!(
        stored(&logs, "/persist/g", "node/kubelet").await,
        [(t, "first".to_string()), (t + 1, "second ✓".to_string())]
    );
    let dup = logs
        .create_log_group()
        .log_group_name("/persist/g")
        .send()
        .await
        .expect_err("group still exists");
    assert!(
        dup.into_service_error()
            .is_resource_already_exists_exception()
    );
    let groups = logs
        .describe_log_groups()
        .log_group_name_prefix("/persist/")
        .send()
        .await
        .expect("DescribeLogGroups");
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(7));
    put(
        &logs,
        "/persist/g",
        "node/kubelet",
        vec![event(t + 2, "third")],
    )
    .await;
    let streams = logs
        .describe_log_streams()
        .log_group_name("/persist/g")
        .send()
        .await
        .expect("DescribeLogStreams");
    assert_eq!(streams.log_streams()[0].last_event_timestamp(), Some(t + 2));
    drop(ds);

    let ds = Devstack::spawn(config()).expect("second restart");
    let logs = client(&ds).await;
    assert_eq!(
        stored(&logs, "/persist/g", "node/kubelet").await.len(),
        3,
        "the batch after the restart was appended too"
    );
}
