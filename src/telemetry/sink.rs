//! The CloudWatch Logs sink: PutLogEvents with one retry owner.
//!
//! The SDK's own retries are off (the client is built with `RetryConfig::disabled()`); this module
//! classifies every failure once ([`classify`]) and retries throttling, 5xx, network and
//! credential errors forever with capped exponential backoff and full jitter — the data waits in
//! the queue or spool meanwhile, nothing is dropped for being late. No DescribeLogStreams, ever:
//! a ResourceNotFoundException creates the group and the stream (already-exists is success) and
//! the batch is replayed. A 200 is never retried: events listed in `rejectedLogEventsInfo` are
//! counted and logged. A batch the service calls invalid (InvalidParameterException) cannot
//! succeed by retrying; when the refusal is about its events it is sent again in halves down to
//! the event at fault, and what stays refused is counted as rejected and logged rather than
//! blocking every later line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::InputLogEvent;

use super::batch::Batch;
use super::record::Record;
use super::status::Counters;

/// First retry delay ceiling; doubles per attempt up to [`Backoff::cap`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Capped exponential backoff with full jitter (sleep uniformly in `[0, min(cap, base·2^n)]`).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BACKOFF_BASE,
            cap: DEFAULT_BACKOFF_CAP,
        }
    }
}

impl Backoff {
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        exp.min(self.cap)
    }

    pub fn delay(&self, attempt: u32) -> Duration {
        let c = self.ceiling(attempt);
        c.mul_f64(rand::random::<f64>())
    }
}

/// Most halvings of one batch after refusals about its events: isolating one bad event among
/// 10,000 takes 14, so 64 (128 extra calls at most) isolates four and bounds the cost of a
/// refusal that only looks like it is about events.
pub const MAX_REJECT_SPLITS: usize = 64;

/// Whether an InvalidParameterException's message is about the events of the call (a member of
/// `logEvents`, their order, span or size) rather than the group or stream, so that sending the
/// events in smaller calls can succeed.
fn about_events(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("logevents") || e.contains("log event") || e.contains("too large")
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Group or stream missing: create them and replay.
    Missing,
    /// Throttling, 5xx, network, timeouts, credentials (rotation fixes them): back off and retry.
    Retry,
    /// The request itself is wrong; retrying cannot help.
    Reject,
}

/// Classifies an error by its AWS error code and HTTP status (`None` for network/timeout
/// failures that never produced a response).
pub fn classify(code: Option<&str>, status: Option<u16>) -> Class {
    match code {
        Some("ResourceNotFoundException") => Class::Missing,
        Some("InvalidParameterException" | "SerializationException" | "ValidationException") => {
            Class::Reject
        }
        Some(_) | None => match status {
            Some(s)
                if (400..500).contains(&s)
                    && s != 429
                    && s != 403
                    && s != 408
                    && code.is_none() =>
            {
                Class::Reject
            }
            _ => Class::Retry,
        },
    }
}

fn classify_sdk<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>,
) -> Class {
    match e {
        SdkError::ServiceError(s) => classify(s.err().code(), Some(s.raw().status().as_u16())),
        SdkError::ResponseError(r) => classify(None, Some(r.raw().status().as_u16())),
        _ => Class::Retry,
    }
}

fn describe<E: std::fmt::Debug + ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>,
) -> String {
    match e {
        SdkError::ServiceError(s) => {
            format!(
                "{}: {}",
                s.err().code().unwrap_or("unknown"),
                s.err().message().unwrap_or("")
            )
        }
        SdkError::DispatchFailure(_) => "network error (connection failed)".into(),
        SdkError::TimeoutError(_) => "timed out".into(),
        other => format!("{other:?}"),
    }
}

/// Ships batches of one log group.
pub struct LogsSink {
    client: Client,
    group: String,
    /// `{node}` and `{unit}` replaced per stream key.
    stream_template: String,
    node: String,
    backoff: Backoff,
    counters: Arc<Counters>,
    /// Set while some batch is failing; the shipper spills to the spool while it is.
    pub failing: Arc<AtomicBool>,
    /// Every PutLogEvents attempt waits for a slot ([`super::pace`]).
    pace: Arc<super::pace::Pace>,
}

impl LogsSink {
    pub fn new(
        client: Client,
        group: String,
        stream_template: String,
        node: String,
        backoff: Backoff,
        counters: Arc<Counters>,
    ) -> LogsSink {
        LogsSink {
            client,
            group,
            stream_template,
            node,
            backoff,
            counters,
            failing: Arc::new(AtomicBool::new(false)),
            pace: Arc::new(super::pace::Pace::unlimited()),
        }
    }

    /// Paces every PutLogEvents attempt through `pace` (default: unpaced).
    pub fn with_pace(mut self, pace: Arc<super::pace::Pace>) -> LogsSink {
        self.pace = pace;
        self
    }

    pub fn stream_name(&self, key: &str) -> String {
        self.stream_template
            .replace("{node}", &self.node)
            .replace("{unit}", key)
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Sends one batch until CloudWatch accepted it (or called it invalid). Returns when the
    /// batch needs no further attempt.
    ///
    /// A call refused as invalid for something about its events (the error names `logEvents` or
    /// log events) is sent again in halves, down to the single event at fault, so one bad event
    /// costs only itself, not its up to 9,999 neighbours. Events are valid by construction
    /// ([`super::record::Message`]), so this is the second line of defence; it is bounded by
    /// [`MAX_REJECT_SPLITS`] so a refusal that is not about events cannot multiply the calls.
    pub async fn ship(&self, batch: &Batch) {
        let stream = self.stream_name(&batch.stream);
        // Ranges of `batch.events` still to send, the next one last.
        let mut todo = Vec::with_capacity(32);
        todo.push(0..batch.events.len());
        let mut splits = 0usize;
        while let Some(range) = todo.pop() {
            let events = &batch.events[range.clone()];
            if events.is_empty() {
                continue;
            }
            let Err(error) = self.put(&stream, events).await else {
                continue;
            };
            if events.len() > 1 && splits < MAX_REJECT_SPLITS && about_events(&error) {
                splits += 1;
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
                continue;
            }
            tracing::error!(group = %self.group, stream = %stream, error = %error, events = events.len(), "CloudWatch Logs refused events as invalid; counted as rejected");
            self.counters.add_rejected(events.len() as u64);
        }
    }

    /// One PutLogEvents of `events`, retried until it is accepted (`Ok`) or refused as invalid
    /// (`Err` with the service's `code: message`).
    async fn put(&self, stream: &str, events: &[Record]) -> Result<(), String> {
        let n = events.len() as u64;
        let mut attempt = 0u32;
        loop {
            // Built per attempt: the batch stays with the shipper (it may also go to the spool).
            let input: Vec<InputLogEvent> = events
                .iter()
                .filter_map(|r| {
                    InputLogEvent::builder()
                        .timestamp(r.timestamp_ms)
                        .message(r.message.as_str())
                        .build()
                        .ok()
                })
                .collect();
            self.pace
                .acquire(self.failing.load(Ordering::Relaxed))
                .await;
            let res = self
                .client
                .put_log_events()
                .log_group_name(&self.group)
                .log_stream_name(stream)
                .set_log_events(Some(input))
                .send()
                .await;
            match res {
                Ok(out) => {
                    self.failing.store(false, Ordering::Relaxed);
                    let rejected = out
                        .rejected_log_events_info()
                        .map(|i| rejected_count(i, n))
                        .unwrap_or(0);
                    if rejected > 0 {
                        tracing::warn!(group = %self.group, stream = %stream, rejected, info = ?out.rejected_log_events_info(), "CloudWatch Logs rejected events (too old, too new or expired); not retried");
                    }
                    self.counters.add_rejected(rejected);
                    self.counters.add_shipped(n - rejected);
                    return Ok(());
                }
                Err(e) => match classify_sdk(&e) {
                    Class::Missing => {
                        if let Err(msg) = self.create(stream).await {
                            self.fail(attempt, stream, &msg).await;
                            attempt += 1;
                        }
                        // Replay at once after creating.
                    }
                    Class::Retry => {
                        let msg = describe(&e);
                        self.fail(attempt, stream, &msg).await;
                        attempt += 1;
                    }
                    Class::Reject => {
                        return Err(describe(&e));
                    }
                },
            }
        }
    }

    async fn fail(&self, attempt: u32, stream: &str, msg: &str) {
        self.failing.store(true, Ordering::Relaxed);
        self.counters.add_retry();
        let d = self.backoff.delay(attempt);
        if attempt < 3 || attempt.is_multiple_of(10) {
            tracing::warn!(group = %self.group, stream = %stream, attempt, delay_ms = d.as_millis() as u64, error = %msg, "PutLogEvents failed; retrying");
        }
        tokio::time::sleep(d).await;
    }

    /// Creates the group and the stream; already-existing is success.
    async fn create(&self, stream: &str) -> Result<(), String> {
        match self
            .client
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) => {}
            Err(e) => return Err(format!("CreateLogGroup {}: {}", self.group, describe(&e))),
        }
        match self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(stream)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(format!(
                "CreateLogStream {}/{stream}: {}",
                self.group,
                describe(&e)
            )),
        }
    }
}

/// Events a `rejectedLogEventsInfo` covers: `[0, tooOld)`, `[0, expired)`, `[tooNew, n)`. The
/// CloudWatch Logs API reference calls `tooOldLogEventEndIndex` exclusive and
/// `tooNewLogEventStartIndex` inclusive; `expiredLogEventEndIndex` is read like the too-old end
/// (moto reports the last too-old index inclusively; the reference is what AWS answers by).
fn rejected_count(info: &aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo, n: u64) -> u64 {
    let old = info
        .too_old_log_event_end_index()
        .map(i64::from)
        .unwrap_or(0);
    let exp = info
        .expired_log_event_end_index()
        .map(i64::from)
        .unwrap_or(0);
    let front = old.max(exp).clamp(0, n as i64) as u64;
    let back = info
        .too_new_log_event_start_index()
        .map(|i| (n as i64 - i64::from(i)).clamp(0, n as i64) as u64)
        .unwrap_or(0);
    (front + back).min(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo;

    #[test]
    fn classes() {
        assert_eq!(
            classify(Some("ResourceNotFoundException"), Some(400)),
            Class::Missing
        );
        assert_eq!(
            classify(Some("ThrottlingException"), Some(400)),
            Class::Retry
        );
        assert_eq!(
            classify(Some("ServiceUnavailableException"), Some(503)),
            Class::Retry
        );
        assert_eq!(classify(None, Some(500)), Class::Retry);
        assert_eq!(classify(None, None), Class::Retry);
        assert_eq!(
            classify(Some("ExpiredTokenException"), Some(400)),
            Class::Retry
        );
        assert_eq!(
            classify(Some("InvalidParameterException"), Some(400)),
            Class::Reject
        );
        assert_eq!(classify(None, Some(413)), Class::Reject);
    }

    #[test]
    fn backoff_is_capped_exponential() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(30), Duration::from_secs(1));
        for a in 0..10 {
            assert!(b.delay(a) <= b.ceiling(a));
        }
    }

    #[test]
    fn rejected_indices() {
        let i = RejectedLogEventsInfo::builder()
            .too_old_log_event_end_index(2)
            .too_new_log_event_start_index(8)
            .build();
        assert_eq!(rejected_count(&i, 10), 4, "events 0, 1, 8 and 9");
        let i = RejectedLogEventsInfo::builder()
            .expired_log_event_end_index(3)
            .build();
        assert_eq!(rejected_count(&i, 10), 3);
        let i = RejectedLogEventsInfo::builder()
            .too_old_log_event_end_index(1)
            .expired_log_event_end_index(4)
            .build();
        assert_eq!(rejected_count(&i, 10), 4, "expired covers the too-old ones");
    }

    #[test]
    fn refusals_about_events_are_told_from_others() {
        assert!(about_events(
            "InvalidParameterException: 1 validation error detected: Value '' at 'logEvents.37.member.message' failed to satisfy constraint: Member must have length greater than or equal to 1"
        ));
        assert!(about_events(
            "InvalidParameterException: Log events in a single PutLogEvents request must be in chronological order."
        ));
        assert!(!about_events(
            "InvalidParameterException: 1 validation error detected: Value 'a b' at 'logGroupName' failed to satisfy constraint"
        ));
    }

    /// An event CloudWatch refuses (here an empty one, which [`Message`] cannot make) among 100
    /// costs only itself: the batch is sent again in halves down to that event.
    #[test]
    fn one_refused_event_costs_only_itself() {
        use crate::telemetry::batch::WindowBuilder;
        use crate::telemetry::record::Message;
        let ds = hybrid_devstack::Devstack::spawn(hybrid_devstack::Config::default())
            .expect("start devstack");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let creds = aws_credential_types::Credentials::new(
                "AKIADEVSTACKADMIN000",
                "devstack-admin-secret-key-not-a-real-secret",
                None,
                None,
                "test",
            );
            let conf = aws_sdk_cloudwatchlogs::config::Builder::new()
                .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
                .endpoint_url(&ds.url)
                .region(aws_sdk_cloudwatchlogs::config::Region::new("us-west-2"))
                .credentials_provider(creds)
                .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
                .build();
            let client = Client::from_conf(conf);
            let counters = Arc::new(Counters::default());
            let sink = LogsSink::new(
                client.clone(),
                "/test/group".into(),
                "{node}/{unit}".into(),
                "node".into(),
                Backoff::default(),
                counters.clone(),
            );
            let now = crate::telemetry::now_ms();
            let mut w = WindowBuilder::new();
            for i in 0..100 {
                let text = if i == 37 {
                    String::new()
                } else {
                    format!("line {i}")
                };
                w.push(Record {
                    stream: "kubelet".into(),
                    timestamp_ms: now,
                    message: Message::unchecked(text),
                });
            }
            let (batches, _) = w.finish(now);
            sink.ship(&batches[0]).await;
            let c = counters.snapshot();
            assert_eq!((c.shipped, c.rejected), (99, 1));
            let got = client
                .get_log_events()
                .log_group_name("/test/group")
                .log_stream_name("node/kubelet")
                .start_from_head(true)
                .send()
                .await
                .expect("GetLogEvents");
            let got: Vec<&str> = got.events().iter().filter_map(|e| e.message()).collect();
            let want: Vec<String> = (0..100)
                .filter(|&i| i != 37)
                .map(|i| format!("line {i}"))
                .collect();
            assert_eq!(got, want);
        });
    }
}
