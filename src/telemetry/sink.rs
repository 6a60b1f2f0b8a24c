//! The CloudWatch Logs sink: PutLogEvents with one retry owner.
//!
//! The SDK's own retries are off (the client is built with `RetryConfig::disabled()`); this module
//! classifies every failure once ([`classify`]) and retries throttling, 5xx, network and
//! credential errors forever with capped exponential backoff and full jitter — the data waits in
//! the queue or spool meanwhile, nothing is dropped for being late. No DescribeLogStreams, ever:
//! a ResourceNotFoundException creates the group and the stream (already-exists is success) and
//! the batch is replayed at once — and with the same backoff as other failures if the group or
//! stream is still missing after that. A 200 is never retried: events listed in `rejectedLogEventsInfo` are
//! counted and logged. A batch the service calls invalid (InvalidParameterException) cannot
//! succeed by retrying; when the refusal is about its events it is sent again in halves down to
//! the event at fault, and what stays refused is counted as rejected and logged rather than
//! blocking every later line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::Client;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_types::body::SdkBody;

use super::batch::Batch;
use super::body::BodyPool;
use super::record::Record;
use super::status::Counters;

/// First retry delay ceiling; doubles per attempt up to [`Backoff::cap`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest wait between PutLogEvents retries: nodeadm's cap for AWS calls, and long enough that
/// after an outage a fleet's first retries (full jitter) spread over a whole minute instead of
/// arriving within half of one (`scripts/bench herd`).
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(60);

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
    fn retry(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(self.base, self.cap, crate::retry::Spread::Full)
    }

    pub fn ceiling(&self, attempt: u32) -> Duration {
        self.retry().ceiling(attempt)
    }

    /// Full jitter under the ceiling, from the thread's random source.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, &crate::retry::RandomJitter)
    }

    pub fn delay_with(&self, attempt: u32, jitter: &dyn crate::retry::Jitter) -> Duration {
        self.retry().delay(attempt, jitter)
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
    /// The node's role lacks the permission: keep the data, say which policy, back off and
    /// retry (an operator attaching the policy is what fixes it).
    Denied,
    /// The request itself is wrong; retrying cannot help.
    Reject,
}

/// Classifies an error by its AWS error code and HTTP status (`None` for network/timeout
/// failures that never produced a response), through [`crate::retry::logs`].
pub fn classify(code: Option<&str>, status: Option<u16>) -> Class {
    use crate::retry::Class as R;
    match crate::retry::logs(code, status) {
        R::Missing => Class::Missing,
        R::Rejected | R::Fatal => Class::Reject,
        // An account limit (too many groups or streams) is the operator's to free, but no
        // policy fixes it: retried with backoff, not shown as a missing permission.
        R::Denied if code == Some("LimitExceededException") => Class::Retry,
        R::Denied => Class::Denied,
        R::Transient | R::Throttled | R::Credentials => Class::Retry,
    }
}

/// One failed CloudWatch Logs call, as the service (or the network) answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The AWS error code, when the service answered with one.
    pub code: Option<String>,
    /// The HTTP status; `None` for a network failure or timeout.
    pub status: Option<u16>,
    pub message: String,
}

impl CallError {
    pub fn class(&self) -> Class {
        classify(self.code.as_deref(), self.status)
    }

    fn already_exists(&self) -> bool {
        self.code.as_deref() == Some("ResourceAlreadyExistsException")
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// What an accepted PutLogEvents said about its events: `rejectedLogEventsInfo` as
/// `[tooOldLogEventEndIndex, tooNewLogEventStartIndex, expiredLogEventEndIndex]`.
pub type RejectedInfo = [Option<i32>; 3];

/// A boxed call, as [`LogsApi`] returns it.
pub type Call<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, CallError>> + Send + 'a>>;

/// The three CloudWatch Logs calls the sink makes: the SDK client in the agent ([`SdkLogs`]),
/// a scripted service in unit tests.
pub trait LogsApi: Send + Sync {
    fn put_log_events<'a>(
        &'a self,
        group: &'a str,
        stream: &'a str,
        events: &'a [Record],
    ) -> Call<'a, Option<RejectedInfo>>;
    fn create_log_group<'a>(&'a self, group: &'a str) -> Call<'a, ()>;
    fn create_log_stream<'a>(&'a self, group: &'a str, stream: &'a str) -> Call<'a, ()>;
    /// Nothing waits to be shipped: let go of buffers kept for the next calls.
    fn release_buffers(&self) {}
}

/// [`LogsApi`] over the aws-sdk-cloudwatchlogs client (SDK retries off). PutLogEvents bodies
/// are written by [`super::body`] into reused buffers; the SDK signs, sends and parses them.
pub struct SdkLogs {
    client: Client,
    bodies: Arc<BodyPool>,
}

tokio::task_local! {
    /// The body of the PutLogEvents call the current task is making through [`SdkLogs`].
    static PUT_LOG_EVENTS_BODY: bytes::Bytes;
}

/// Puts the body written by [`BodyPool`] into the PutLogEvents request before it is signed.
/// The SDK serializes the input without its events (a few bytes); the operation runs within the
/// calling task, so the body is that task's [`PUT_LOG_EVENTS_BODY`]. A PutLogEvents call made
/// without one fails before anything is sent rather than going out without its events.
#[derive(Debug)]
struct PutLogEventsBody;

impl aws_sdk_cloudwatchlogs::config::Intercept for PutLogEventsBody {
    fn name(&self) -> &'static str {
        "PutLogEventsBody"
    }

    fn modify_before_signing(
        &self,
        context: &mut aws_sdk_cloudwatchlogs::config::interceptors::BeforeTransmitInterceptorContextMut<'_>,
        _components: &aws_sdk_cloudwatchlogs::config::RuntimeComponents,
        _cfg: &mut aws_sdk_cloudwatchlogs::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let request = context.request_mut();
        if request.headers().get("x-amz-target") != Some("Logs_20140328.PutLogEvents") {
            return Ok(());
        }
        let body = PUT_LOG_EVENTS_BODY
            .try_with(bytes::Bytes::clone)
            .map_err(|_| {
                "PutLogEvents called without the body of its events (the agent's calls go through \
             telemetry::sink::SdkLogs)"
            })?;
        request
            .headers_mut()
            .insert("content-length", body.len().to_string());
        *request.body_mut() = SdkBody::from(body);
        Ok(())
    }
}

impl SdkLogs {
    /// Over `client`'s configuration, with the interceptor that puts the bodies in.
    pub fn new(client: Client) -> SdkLogs {
        let config = client
            .config()
            .to_builder()
            .interceptor(PutLogEventsBody)
            .build();
        SdkLogs {
            client: Client::from_conf(config),
            bodies: BodyPool::new(),
        }
    }
}

impl LogsApi for SdkLogs {
    fn release_buffers(&self) {
        self.bodies.release();
    }

    fn put_log_events<'a>(
        &'a self,
        group: &'a str,
        stream: &'a str,
        events: &'a [Record],
    ) -> Call<'a, Option<RejectedInfo>> {
        Box::pin(async move {
            // Built per attempt: the batch stays with the shipper (it may also go to the spool).
            let body = self.bodies.body(group, stream, events);
            let call = self
                .client
                .put_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .send();
            let out = PUT_LOG_EVENTS_BODY
                .scope(body, call)
                .await
                .map_err(|e| call_error(&e))?;
            Ok(out.rejected_log_events_info().map(|i| {
                [
                    i.too_old_log_event_end_index(),
                    i.too_new_log_event_start_index(),
                    i.expired_log_event_end_index(),
                ]
            }))
        })
    }

    fn create_log_group<'a>(&'a self, group: &'a str) -> Call<'a, ()> {
        Box::pin(async move {
            self.client
                .create_log_group()
                .log_group_name(group)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| call_error(&e))
        })
    }

    fn create_log_stream<'a>(&'a self, group: &'a str, stream: &'a str) -> Call<'a, ()> {
        Box::pin(async move {
            self.client
                .create_log_stream()
                .log_group_name(group)
                .log_stream_name(stream)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| call_error(&e))
        })
    }
}

fn call_error<E: std::fmt::Debug + ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_cloudwatchlogs::config::http::HttpResponse>,
) -> CallError {
    match e {
        SdkError::ServiceError(s) => CallError {
            code: s.err().code().map(str::to_string),
            status: Some(s.raw().status().as_u16()),
            message: s.err().message().unwrap_or("").to_string(),
        },
        SdkError::ResponseError(r) => CallError {
            code: None,
            status: Some(r.raw().status().as_u16()),
            message: "unparsable response".into(),
        },
        SdkError::DispatchFailure(_) => CallError {
            code: None,
            status: None,
            message: "network error (connection failed)".into(),
        },
        SdkError::TimeoutError(_) => CallError {
            code: None,
            status: None,
            message: "timed out".into(),
        },
        other => CallError {
            code: None,
            status: None,
            message: format!("{other:?}"),
        },
    }
}

/// Ships batches of one log group.
pub struct LogsSink {
    api: Arc<dyn LogsApi>,
    jitter: Arc<dyn crate::retry::Jitter>,
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
        LogsSink::with_api(
            Arc::new(SdkLogs::new(client)),
            group,
            stream_template,
            node,
            backoff,
            counters,
        )
    }

    /// The sink over any [`LogsApi`] (tests script the service).
    pub fn with_api(
        api: Arc<dyn LogsApi>,
        group: String,
        stream_template: String,
        node: String,
        backoff: Backoff,
        counters: Arc<Counters>,
    ) -> LogsSink {
        LogsSink {
            api,
            jitter: Arc::new(crate::retry::RandomJitter),
            group,
            stream_template,
            node,
            backoff,
            counters,
            failing: Arc::new(AtomicBool::new(false)),
            pace: Arc::new(super::pace::Pace::unlimited()),
        }
    }

    /// Pins the backoff's random draw (tests).
    pub fn with_jitter(mut self, jitter: Arc<dyn crate::retry::Jitter>) -> LogsSink {
        self.jitter = jitter;
        self
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

    /// Nothing waits to be shipped: the API lets go of buffers it kept for the next calls.
    pub fn release_buffers(&self) {
        self.api.release_buffers();
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
        // ResourceNotFound answers to this call so far.
        let mut missing = 0u32;
        loop {
            if let Some((failing_for, slow)) = self
                .pace
                .acquire(self.failing.load(Ordering::Relaxed))
                .await
            {
                self.counters.set_slow_start(failing_for, slow.ramp());
            }
            match self.api.put_log_events(&self.group, stream, events).await {
                Ok(info) => {
                    self.failing.store(false, Ordering::Relaxed);
                    self.counters.clear_denied("PutLogEvents");
                    let rejected = info.map(|i| rejected_count(i, n)).unwrap_or(0);
                    if rejected > 0 {
                        tracing::warn!(group = %self.group, stream = %stream, rejected, info = ?info, "CloudWatch Logs rejected events (too old, too new or expired); not retried");
                    }
                    self.counters.add_rejected(rejected);
                    self.counters.add_shipped(n - rejected);
                    return Ok(());
                }
                Err(e) => match e.class() {
                    Class::Missing => {
                        if missing > 0 {
                            // Still missing after a create that succeeded (deleted again, or
                            // the service lags): back off like any failure, not a hot loop.
                            self.fail(attempt, stream, &e.to_string()).await;
                            attempt += 1;
                        }
                        missing += 1;
                        if let Err(msg) = self.create(stream).await {
                            self.fail(attempt, stream, &msg).await;
                            attempt += 1;
                        }
                        // The first replay after creating goes at once.
                    }
                    Class::Retry => {
                        self.fail(attempt, stream, &e.to_string()).await;
                        attempt += 1;
                    }
                    Class::Denied => {
                        if attempt == 0 {
                            tracing::error!(group = %self.group, stream = %stream, error = %e, "CloudWatch Logs denies PutLogEvents to this node's IAM role: the spool keeps the events; attach the policy `hybrid-agent status` shows (README \"IAM policy for telemetry\")");
                        }
                        self.counters.set_denied("PutLogEvents", &e.to_string());
                        self.fail(attempt, stream, &e.to_string()).await;
                        attempt += 1;
                    }
                    Class::Reject => {
                        return Err(e.to_string());
                    }
                },
            }
        }
    }

    async fn fail(&self, attempt: u32, stream: &str, msg: &str) {
        self.failing.store(true, Ordering::Relaxed);
        self.counters.add_retry();
        let d = self.backoff.delay_with(attempt, self.jitter.as_ref());
        if attempt < 3 || attempt.is_multiple_of(10) {
            tracing::warn!(group = %self.group, stream = %stream, attempt, delay_ms = d.as_millis() as u64, error = %msg, "PutLogEvents failed; retrying");
        }
        tokio::time::sleep(d).await;
    }

    /// Creates the group and the stream; already-existing is success.
    async fn create(&self, stream: &str) -> Result<(), String> {
        match self.api.create_log_group(&self.group).await {
            Ok(()) => {}
            Err(e) if e.already_exists() => {}
            Err(e) => return Err(format!("CreateLogGroup {}: {e}", self.group)),
        }
        match self.api.create_log_stream(&self.group, stream).await {
            Ok(()) => Ok(()),
            Err(e) if e.already_exists() => Ok(()),
            Err(e) => Err(format!("CreateLogStream {}/{stream}: {e}", self.group)),
        }
    }
}

/// Events a `rejectedLogEventsInfo` covers: `[0, tooOld)`, `[0, expired)`, `[tooNew, n)`. The
/// CloudWatch Logs API reference calls `tooOldLogEventEndIndex` exclusive and
/// `tooNewLogEventStartIndex` inclusive; `expiredLogEventEndIndex` is read like the too-old end
/// (moto reports the last too-old index inclusively; the reference is what AWS answers by).
fn rejected_count([too_old, too_new, expired]: RejectedInfo, n: u64) -> u64 {
    let n_i = i64::try_from(n).unwrap_or(i64::MAX);
    let old = too_old.map(i64::from).unwrap_or(0);
    let exp = expired.map(i64::from).unwrap_or(0);
    let front = old.max(exp).clamp(0, n_i) as u64;
    let back = too_new
        .map(|i| (n_i - i64::from(i)).clamp(0, n_i) as u64)
        .unwrap_or(0);
    (front + back).min(n)
}

/// Fuzzing entry (fuzz/fuzz_targets/cloudwatch_response.rs, replayed by tests/fuzz_corpus.rs):
/// what the sink makes of a PutLogEvents answer the SDK has parsed (error code, HTTP status,
/// message; `[tooOld, tooNew, expired]` indices for a batch of `events`). Panics if more events
/// count as rejected than were sent (the shipped count would wrap).
#[doc(hidden)]
pub fn fuzz_response(
    code: Option<&str>,
    status: Option<u16>,
    message: &str,
    [too_old, too_new, expired]: [Option<i32>; 3],
    events: u64,
) {
    let _ = classify(code, status);
    let _ = about_events(message);
    let rejected = rejected_count([too_old, too_new, expired], events);
    assert!(rejected <= events, "{rejected} of {events} events rejected");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps every request's body and Content-Length as the SDK is about to send it (signed),
    /// then stops the call: nothing goes to the network.
    type Captured = Vec<(Vec<u8>, Option<String>)>;

    #[derive(Debug, Default, Clone)]
    struct Capture(Arc<std::sync::Mutex<Captured>>);

    impl Capture {
        fn requests(&self) -> Captured {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    impl aws_sdk_cloudwatchlogs::config::Intercept for Capture {
        fn name(&self) -> &'static str {
            "capture"
        }

        fn read_before_transmit(
            &self,
            context: &aws_sdk_cloudwatchlogs::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _components: &aws_sdk_cloudwatchlogs::config::RuntimeComponents,
            _cfg: &mut aws_sdk_cloudwatchlogs::config::ConfigBag,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let request = context.request();
            let body = request.body().bytes().unwrap_or_default().to_vec();
            let length = request.headers().get("content-length").map(str::to_string);
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((body, length));
            Err("captured before sending".into())
        }
    }

    #[tokio::test]
    async fn put_log_events_sends_the_body_the_sdk_serializer_writes_with_its_length() {
        let capture = Capture::default();
        let config = aws_sdk_cloudwatchlogs::Config::builder()
            .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
            .region(aws_sdk_cloudwatchlogs::config::Region::new("us-west-2"))
            .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .endpoint_url("http://127.0.0.1:9")
            .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(7))
                    .build(),
            )
            .interceptor(capture.clone())
            .build();
        let client = Client::from_conf(config);
        let stream: Arc<str> = Arc::from("kubelet");
        let texts = [
            "I1204 07:00:00.000000 1 kubelet.go:100] plain",
            "quotes \" backslash \\ tab \t cr \r control \u{1}\u{1f} del \u{7f}",
            "unicode é ✓ 😀 \u{2028} \u{feff}",
        ];
        let records: Vec<Record> = texts
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                Record::events(stream.clone(), 1_733_300_000_000 + i as i64, t.to_string())
            })
            .collect();
        // The SDK's own serializer, from InputLogEvents.
        let input: Vec<aws_sdk_cloudwatchlogs::types::InputLogEvent> = records
            .iter()
            .map(|r| {
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                    .timestamp(r.timestamp_ms)
                    .message(r.message.as_str())
                    .build()
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .collect();
        let sdk = client
            .put_log_events()
            .log_group_name("/aws/eks-hybrid/c")
            .log_stream_name("mi-0/kubelet")
            .set_log_events(Some(input))
            .send()
            .await;
        assert!(sdk.is_err(), "the capture stops the call");
        let logs = SdkLogs::new(client);
        // The client rebuilt with the interceptor keeps the rest of its configuration: the SDK
        // must not start retrying behind the sink, nor lose its timeouts.
        let config = logs.client.config();
        assert_eq!(config.retry_config().map(|r| r.max_attempts()), Some(1));
        assert_eq!(
            config
                .timeout_config()
                .and_then(|t| t.operation_attempt_timeout()),
            Some(Duration::from_secs(7))
        );
        let ours = logs
            .put_log_events("/aws/eks-hybrid/c", "mi-0/kubelet", &records)
            .await;
        assert!(ours.is_err(), "the capture stops the call");
        let got = capture.requests();
        assert_eq!(got.len(), 2, "one request each");
        let (sdk_body, sdk_length) = &got[0];
        let (our_body, our_length) = &got[1];
        assert_eq!(
            String::from_utf8_lossy(our_body),
            String::from_utf8_lossy(sdk_body),
            "the same bytes as the SDK's serializer"
        );
        assert_eq!(
            our_length.as_deref(),
            Some(our_body.len().to_string().as_str())
        );
        assert_eq!(sdk_length, our_length);

        // A PutLogEvents call on the same client that comes without its body is stopped before
        // it is sent: it would otherwise go out without events.
        let bare = logs
            .client
            .put_log_events()
            .log_group_name("/aws/eks-hybrid/c")
            .log_stream_name("mi-0/kubelet")
            .send()
            .await;
        let e = format!("{:?}", bare.err());
        assert!(e.contains("without the body of its events"), "{e}");
        let sent = capture.requests().len();
        assert_eq!(sent, 2, "nothing more sent");
        // Other calls on it are untouched.
        let _ = logs
            .client
            .create_log_group()
            .log_group_name("g")
            .send()
            .await;
        let got = capture.requests();
        assert_eq!(got.len(), 3);
        assert_eq!(
            String::from_utf8_lossy(&got[2].0),
            r#"{"logGroupName":"g"}"#
        );
    }

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
        assert_eq!(
            classify(Some("AccessDeniedException"), Some(400)),
            Class::Denied
        );
        assert_eq!(
            classify(Some("LimitExceededException"), Some(400)),
            Class::Retry
        );
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
        assert_eq!(
            rejected_count([Some(2), Some(8), None], 10),
            4,
            "events 0, 1, 8 and 9"
        );
        assert_eq!(rejected_count([None, None, Some(3)], 10), 3);
        assert_eq!(
            rejected_count([Some(1), None, Some(4)], 10),
            4,
            "expired covers the too-old ones"
        );
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
            let client = crate::telemetry::devstack_logs_client(&ds.url);
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

    /// A stand-in CloudWatch Logs on 127.0.0.1 that creates groups and streams but answers
    /// every PutLogEvents with ResourceNotFoundException (as a stream deleted again at once, or
    /// a service that lags, would). Returns its URL and the count of PutLogEvents calls.
    fn never_found_logs() -> (String, Arc<std::sync::atomic::AtomicU64>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", l.local_addr().expect("addr"));
        let puts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = puts.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let p = p.clone();
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().expect("clone");
                    let mut r = BufReader::new(conn);
                    loop {
                        let (mut len, mut target) = (0usize, String::new());
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            let l = line.trim_end().to_ascii_lowercase();
                            if l.is_empty() {
                                break;
                            }
                            if let Some(v) = l.strip_prefix("content-length:") {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            if let Some(v) = l.strip_prefix("x-amz-target:") {
                                target = v.trim().to_string();
                            }
                        }
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        let (status, body) = if target.ends_with("putlogevents") {
                            p.fetch_add(1, Ordering::Relaxed);
                            (
                                "400 Bad Request",
                                r#"{"__type":"ResourceNotFoundException","message":"The specified log stream does not exist."}"#,
                            )
                        } else {
                            ("200 OK", "{}")
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, puts)
    }

    /// A stream that is still not found after it was created is retried with backoff (counted
    /// as retries, the sink marked failing), not replayed in a hot loop.
    #[test]
    fn persistent_not_found_backs_off() {
        use crate::telemetry::record::Message;
        let (url, puts) = never_found_logs();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let counters = Arc::new(Counters::default());
        let failing = rt.block_on(async {
            let creds =
                aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "test");
            let conf = aws_sdk_cloudwatchlogs::config::Builder::new()
                .behavior_version(aws_sdk_cloudwatchlogs::config::BehaviorVersion::latest())
                .endpoint_url(&url)
                .region(aws_sdk_cloudwatchlogs::config::Region::new("us-west-2"))
                .credentials_provider(creds)
                .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
                .build();
            let sink = LogsSink::new(
                Client::from_conf(conf),
                "/test/group".into(),
                "{node}/{unit}".into(),
                "node".into(),
                Backoff {
                    base: Duration::from_millis(100),
                    cap: Duration::from_millis(400),
                },
                counters.clone(),
            );
            let now = crate::telemetry::now_ms();
            let mut w = crate::telemetry::batch::WindowBuilder::new();
            w.push(Record {
                stream: "kubelet".into(),
                timestamp_ms: now,
                message: Message::new("line".into()).expect("message"),
            });
            let (batches, _) = w.finish(now);
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.ship(&batches[0])).await;
            sink.failing.load(Ordering::Relaxed)
        });
        let n = puts.load(Ordering::Relaxed);
        // With backoff (mean delay 50..200 ms) two seconds hold a few dozen calls at most; a
        // hot loop makes hundreds.
        assert!(n <= 40, "{n} PutLogEvents calls in 2 s");
        assert!(counters.snapshot().retries >= 2, "retries counted");
        assert!(failing, "sink marked failing");
    }
}
