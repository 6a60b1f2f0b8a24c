//! Telemetry: journald and the supervised children's output to CloudWatch Logs, health metrics to
//! CloudWatch — nothing lost across crashes, reboots and long outages, cheaply.
//!
//! `hybrid-agent run` starts it ([`crate::daemon`]) once `join` recorded the node, with the
//! rotation loop's credentials in-process, the built-in supervisor's child output and a
//! [`HealthProbe`] over the supervisor and the rotation; its [`StatusCell`] is copied into the
//! state `hybrid-agent status` reads.
//!
//! Shape (one task each, started by [`run`]):
//! - **journal source** ([`journal`]): a thread reading journal files directly (our own reader;
//!   docs/measurements.md "Journal reader" has the figures that chose it) for the configured units
//!   (`_SYSTEMD_UNIT`, else `SYSLOG_IDENTIFIER`) and priority, from the saved cursor on;
//! - **shipper** ([`shipper`]) per source: memory queue while CloudWatch keeps up (the journal is
//!   the durable copy; the cursor advances only after CloudWatch accepted), the spool
//!   ([`spool`]) from the first failed attempt on, so journald may vacuum during an outage; child
//!   output ([`child`]) always goes through the spool;
//! - **sink** ([`sink`]): PutLogEvents, batches to the real limits ([`batch`]), bodies written
//!   into reused buffers ([`body`]), create on ResourceNotFound, one retry owner;
//! - **metrics** ([`metrics`]): sampled to disk first, sent with original timestamps.
//!
//! [`StatusCell`] holds what `hybrid-agent status` shows.
//!
//! Figures (bench drain, long outage and crash runs) and their history: docs/measurements.md
//! "Telemetry drain" and docs/measurements.md "Outage and crash runs".

pub mod batch;
pub mod body;
pub mod child;
pub mod journal;
pub mod metrics;
pub mod pace;
pub mod record;
pub mod shipper;
pub mod sink;
pub mod spool;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use child::{ChildAck, ChildLine, ChildLineSender, ChildStream, child_line_channel};
pub use metrics::{ComponentHealth, HealthProbe, NoProbe};
pub use status::{StatusCell, TelemetryStatus};

use journal::{Cursor, Filter, JournalReader};
use record::Record;
use shipper::{Chunk, Shipper, ShipperOptions};
use sink::{Backoff, LogsSink};
use spool::{Spool, SpoolBudget};

/// Persistent journal directory (relative to the host root): journald's `Storage=persistent`.
pub const JOURNAL_DIR_PERSISTENT: &str = "var/log/journal";
/// Volatile journal directory: `Storage=volatile`, or `auto` without /var/log/journal.
pub const JOURNAL_DIR_VOLATILE: &str = "run/log/journal";
/// Machine id file naming the journal subdirectory.
pub const MACHINE_ID_FILE: &str = "etc/machine-id";
/// Entries read per chunk: big enough to amortise the channel, small enough for memory.
const CHUNK_RECORDS: usize = 2000;
/// Chunks buffered between the reader thread and the shipper.
const CHUNK_CHANNEL: usize = 2;
/// Memory queue bound of the journal shipper (two full batches: one in flight, one ready).
pub const DEFAULT_MEM_LIMIT_BYTES: usize = 2 << 20;
/// How often the reader looks for new entries when it has caught up.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The metrics spool's part of the spool bound (1/8: at 512 MiB, weeks of samples).
const METRICS_SPOOL_SHARE: u64 = 8;
/// Delay before reopening the journal after a read error.
const READ_ERROR_DELAY: Duration = Duration::from_secs(5);

/// Everything telemetry needs, resolved (the daemon maps the agent config onto it).
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub cluster: String,
    pub node: String,
    /// Log group, `{cluster}` (and `{node}`, `{region}`) already or still to be replaced.
    pub log_group: String,
    /// Stream template with `{node}` and `{unit}`.
    pub log_stream: String,
    pub region: String,
    /// Units or syslog identifiers to ship.
    pub units: Vec<String>,
    /// Highest PRIORITY value shipped (6 = info).
    pub max_priority: u8,
    /// Journal directories (each holding `*.journal` files).
    pub journal_dirs: Vec<PathBuf>,
    /// Where the journal cursor lives.
    pub state_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub flush_interval: Duration,
    pub poll_interval: Duration,
    pub mem_limit_bytes: usize,
    pub backoff: Backoff,
    pub metric_namespace: String,
    /// `None` disables metrics.
    pub metrics_interval: Option<Duration>,
    /// Host root (`--root`), for the disk metric.
    pub root: PathBuf,
    /// The first PutLogEvents waits a random time up to this (`daemon.startup_jitter`), and so
    /// does the drain after an outage; calls are paced ([`pace`]).
    pub startup_spread: Duration,
    /// PutLogEvents calls a second ([`pace::DRAIN_RATE_PER_SEC`] for the agent); `None`: no
    /// pacing at all (throughput benchmarks and pipeline tests).
    pub put_rate: Option<f64>,
}

impl TelemetrySettings {
    pub fn log_group_name(&self) -> String {
        self.log_group
            .replace("{cluster}", &self.cluster)
            .replace("{node}", &self.node)
            .replace("{region}", &self.region)
    }

    pub fn cursor_path(&self) -> PathBuf {
        self.state_dir.join("journal.cursor")
    }

    fn stream_template(&self) -> String {
        self.log_stream
            .replace("{cluster}", &self.cluster)
            .replace("{region}", &self.region)
    }
}

impl TelemetrySettings {
    /// The settings `hybrid-agent run` uses: the validated agent config, host paths under
    /// `--root`, and the node's identity (cluster, node name, region).
    pub fn from_agent_config(
        agent: &crate::config::AgentConfig,
        paths: &crate::paths::HostPaths,
        cluster: &str,
        node: &str,
        region: &str,
    ) -> TelemetrySettings {
        let t = &agent.telemetry;
        TelemetrySettings {
            cluster: cluster.to_string(),
            node: node.to_string(),
            log_group: t.log_group.clone(),
            log_stream: t.log_stream.clone(),
            region: region.to_string(),
            units: t.units.clone(),
            max_priority: t.min_priority.number(),
            journal_dirs: default_journal_dirs(paths.root()),
            state_dir: paths.state_dir().join("telemetry"),
            spool_dir: agent.spool.dir.clone(),
            spool_max_bytes: agent.spool.max_bytes,
            flush_interval: t.flush_interval,
            poll_interval: DEFAULT_POLL_INTERVAL,
            mem_limit_bytes: DEFAULT_MEM_LIMIT_BYTES,
            backoff: Backoff::default(),
            metric_namespace: t.metric_namespace.clone(),
            metrics_interval: Some(t.metrics_interval),
            root: paths.root().to_path_buf(),
            startup_spread: agent.daemon.startup_jitter,
            put_rate: Some(pace::DRAIN_RATE_PER_SEC),
        }
    }
}

/// journald's directories under `root` for this machine: persistent then volatile. None without
/// a machine id (journald names them after it).
pub fn default_journal_dirs(root: &Path) -> Vec<PathBuf> {
    let id = std::fs::read_to_string(root.join(MACHINE_ID_FILE))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if id.is_empty() || id.contains('/') {
        return Vec::new();
    }
    [JOURNAL_DIR_PERSISTENT, JOURNAL_DIR_VOLATILE]
        .iter()
        .map(|d| root.join(d).join(&id))
        .collect()
}

/// Why there is no journal to read, with what to do; shown in the log, `status` and `doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingJournal {
    pub problem: String,
    pub fix: &'static str,
}

impl std::fmt::Display for MissingJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.problem, self.fix)
    }
}

/// `None` when one of `dirs` (from [`default_journal_dirs`] under `root`) exists.
pub fn missing_journal(root: &Path, dirs: &[PathBuf]) -> Option<MissingJournal> {
    if dirs.is_empty() {
        return Some(MissingJournal {
            problem: format!(
                "no machine id in {}: journald names its directories after it",
                root.join(MACHINE_ID_FILE).display()
            ),
            fix: "create it (systemd-machine-id-setup) and restart systemd-journald",
        });
    }
    if dirs.iter().any(|d| d.is_dir()) {
        return None;
    }
    let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Some(MissingJournal {
        problem: format!(
            "no journal for this machine: none of {} exists",
            list.join(", ")
        ),
        fix: "is systemd-journald running and storing entries (Storage= in journald.conf)? journald creates the directory on its first write",
    })
}

/// What [`run`] is handed by the daemon.
#[derive(Clone)]
pub struct TelemetryDeps {
    /// SDK config carrying the rotated credentials and endpoints; telemetry builds its clients
    /// from it with SDK retries off.
    pub sdk: aws_config::SdkConfig,
    /// Child output from the built-in supervisor, if it runs. Shared so that a telemetry
    /// restarted by the daemon takes the same channel up again (each run holds the lock).
    pub child_lines: Option<SharedChildLines>,
    pub probe: Arc<dyn HealthProbe>,
    /// Per-service endpoint overrides on top of `sdk` (`AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`,
    /// `[endpoints] logs = ...`); `None` keeps what `sdk` resolves.
    pub endpoints: TelemetryEndpoints,
}

/// The receiving end of the child-output channel, handed from one telemetry run to the next.
pub type SharedChildLines = Arc<tokio::sync::Mutex<mpsc::Receiver<ChildLine>>>;

/// Endpoint overrides of the two CloudWatch services telemetry calls.
#[derive(Debug, Clone, Default)]
pub struct TelemetryEndpoints {
    pub logs: Option<String>,
    pub metrics: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Shipper(#[from] shipper::ShipperError),
    #[error("cannot create the telemetry state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("telemetry task {task} panicked")]
    Panicked { task: &'static str },
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SDK per-attempt timeout for CloudWatch calls: a hung connection becomes a retry.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The SDK config unit tests point at an in-process devstack: its admin key pair, us-west-2,
/// SDK retries off, as the agent builds its own.
#[cfg(test)]
fn devstack_sdk() -> aws_config::SdkConfig {
    let creds = aws_credential_types::Credentials::new(
        "AKIADEVSTACKADMIN000",
        "devstack-admin-secret-key-not-a-real-secret",
        None,
        None,
        "test",
    );
    crate::aws::sdk_config(
        "us-west-2",
        aws_credential_types::provider::SharedCredentialsProvider::new(creds),
        crate::aws::Retries::Caller,
        None,
    )
}

/// A CloudWatch Logs client for the devstack at `url` (unit tests).
#[cfg(test)]
pub(crate) fn devstack_logs_client(url: &str) -> aws_sdk_cloudwatchlogs::Client {
    logs_client(&devstack_sdk(), Some(url))
}

/// A CloudWatch metrics client for the devstack at `url` (unit tests).
#[cfg(test)]
pub(crate) fn devstack_metrics_client(url: &str) -> aws_sdk_cloudwatch::Client {
    metrics_client(&devstack_sdk(), Some(url))
}

fn logs_client(
    sdk: &aws_config::SdkConfig,
    endpoint: Option<&str>,
) -> aws_sdk_cloudwatchlogs::Client {
    let mut b = aws_sdk_cloudwatchlogs::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    let conf = b
        .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(CALL_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(conf)
}

fn metrics_client(
    sdk: &aws_config::SdkConfig,
    endpoint: Option<&str>,
) -> aws_sdk_cloudwatch::Client {
    let mut b = aws_sdk_cloudwatch::config::Builder::from(sdk);
    if let Some(url) = endpoint {
        b = b.endpoint_url(url);
    }
    let conf = b
        .retry_config(aws_sdk_cloudwatch::config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_sdk_cloudwatch::config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(CALL_TIMEOUT)
                .connect_timeout(CONNECT_TIMEOUT)
                .build(),
        )
        .build();
    aws_sdk_cloudwatch::Client::from_conf(conf)
}

/// Runs the whole telemetry subsystem until `shutdown` turns true. Spool recovery figures (torn
/// bytes, corrupt records) are counted in `status` before anything is read.
pub async fn run(
    settings: TelemetrySettings,
    deps: TelemetryDeps,
    status: Arc<StatusCell>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), TelemetryError> {
    // This run's own stop: the daemon's, or the first of its tasks to fail.
    let (run_stop, inner) = watch::channel(false);
    let run_stop = Arc::new(run_stop);
    {
        let (mut outer, run_stop) = (shutdown.clone(), run_stop.clone());
        let mut inner = inner.clone();
        crate::logging::spawn_here(async move {
            tokio::select! {
                _ = outer.wait_for(|s| *s) => { let _ = run_stop.send(true); }
                _ = inner.wait_for(|s| *s) => {}
            }
        });
    }
    std::fs::create_dir_all(&settings.state_dir).map_err(|source| TelemetryError::StateDir {
        path: settings.state_dir.clone(),
        source,
    })?;
    // Metrics get their own eighth of the bound, so a spool full of logs never stops the
    // samples that show it (SpoolPaused) from being kept.
    let metrics_max = settings.spool_max_bytes / METRICS_SPOOL_SHARE;
    let budget = SpoolBudget::new(settings.spool_max_bytes - metrics_max);
    let metrics_budget = SpoolBudget::new(metrics_max);
    let counters = status.counters.clone();
    let open = |name: &str, budget: &Arc<SpoolBudget>| -> Result<Spool, spool::SpoolError> {
        let (s, rec) = Spool::open(&settings.spool_dir.join(name), budget.clone())?;
        if rec.torn_bytes > 0 {
            tracing::warn!(
                spool = name,
                bytes = rec.torn_bytes,
                "spool ended in a torn record (crash while writing); truncated"
            );
        }
        counters.add_spool_torn(rec.torn_bytes);
        counters.add_spool_corrupt(rec.corrupt_records);
        Ok(s)
    };
    let journal_spool = open("journal", &budget)?;
    let child_spool = open("child", &budget)?;
    let metrics_spool = open("metrics", &metrics_budget)?;
    status.update(|s| s.spool_max_bytes = settings.spool_max_bytes - metrics_max);

    let group = settings.log_group_name();
    let sink = Arc::new(
        LogsSink::new(
            logs_client(&deps.sdk, deps.endpoints.logs.as_deref()),
            group,
            settings.stream_template(),
            settings.node.clone(),
            settings.backoff,
            counters.clone(),
        )
        .with_pace(Arc::new(match settings.put_rate {
            Some(rate) => pace::Pace::for_node(rate, settings.startup_spread),
            None => pace::Pace::unlimited(),
        })),
    );

    // Journal source: a thread (file reads block) feeding the journal shipper.
    let cursor_path = settings.cursor_path();
    let after = shipper::load_cursor(&cursor_path);
    let filter = Filter {
        names: settings
            .units
            .iter()
            .map(|u| (u.clone(), Arc::<str>::from(u.trim_end_matches(".service"))))
            .collect(),
        max_priority: settings.max_priority,
    };
    let (jtx, jrx) = mpsc::channel(CHUNK_CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let reader_thread = {
        let (dirs, stop, status, poll, root) = (
            settings.journal_dirs.clone(),
            stop.clone(),
            status.clone(),
            settings.poll_interval,
            settings.root.clone(),
        );
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("journal-reader".into())
            .spawn(move || {
                let _entered = span.entered();
                let source = JournalSource { dirs, root, filter };
                journal_loop(source, after, jtx, poll, stop, status)
            })
            .map_err(|source| TelemetryError::StateDir {
                path: PathBuf::from("journal-reader thread"),
                source,
            })?
    };
    let jopts = ShipperOptions {
        flush_interval: settings.flush_interval,
        mem_limit_bytes: settings.mem_limit_bytes,
        durable_input: false,
        cursor_path: Some(cursor_path),
    };
    let journal_task = crate::logging::spawn_here(
        Shipper::new(journal_spool, sink.clone(), jopts, status.clone()).run(jrx, inner.clone()),
    );

    // Child output: converted to records, always through the spool.
    let child_task = deps.child_lines.map(|lines| {
        let (ctx, crx) = mpsc::channel::<Chunk>(CHUNK_CHANNEL);
        let mut sd = inner.clone();
        crate::logging::spawn_here(async move {
            let mut lines = lines.lock_owned().await;
            let mut buf = Vec::with_capacity(256);
            loop {
                tokio::select! {
                    n = lines.recv_many(&mut buf, 1024) => {
                        if n == 0 { break; }
                        // The last acknowledgement per source is its position after the chunk.
                        let mut acks: Vec<child::ChildAck> = Vec::new();
                        for l in &buf {
                            if let Some(a) = &l.ack {
                                match acks.iter_mut().find(|x| Arc::ptr_eq(&x.cell, &a.cell)) {
                                    Some(x) => x.offset = a.offset,
                                    None => acks.push(a.clone()),
                                }
                            }
                        }
                        let records = buf.drain(..).flat_map(child::ChildLine::into_records).collect();
                        let chunk = Chunk { records, cursor: None, caught_up: false, acks };
                        if ctx.send(chunk).await.is_err() { break; }
                    }
                    _ = sd.changed() => if *sd.borrow() { break; },
                }
            }
        });
        let copts = ShipperOptions {
            flush_interval: settings.flush_interval,
            mem_limit_bytes: settings.mem_limit_bytes,
            durable_input: true,
            cursor_path: None,
        };
        crate::logging::spawn_here(
            Shipper::new(child_spool, sink.clone(), copts, status.clone())
                .run(crx, inner.clone()),
        )
    });

    status.update(|s| s.metric_namespace = settings.metric_namespace.clone());
    let metrics_task = settings.metrics_interval.map(|interval| {
        let ms = metrics::MetricsSettings {
            namespace: settings.metric_namespace.clone(),
            interval,
            cluster: settings.cluster.clone(),
            node: settings.node.clone(),
            backoff: settings.backoff,
        };
        let collector = metrics::Collector::new(settings.root.clone());
        crate::logging::spawn_here(metrics::run_metrics(
            metrics_client(&deps.sdk, deps.endpoints.metrics.as_deref()),
            ms,
            metrics_spool,
            collector,
            deps.probe.clone(),
            status.clone(),
            inner.clone(),
        ))
    });

    // The first task to fail ends this run (the daemon restarts telemetry as a whole): the
    // others are told to stop, then everyone is awaited so no task outlives the run.
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        (
            "journal shipper",
            journal_task.await.map(|r| r.map_err(TelemetryError::from)),
        )
    });
    if let Some(t) = child_task {
        tasks.spawn(async move {
            (
                "child-output shipper",
                t.await.map(|r| r.map_err(TelemetryError::from)),
            )
        });
    }
    if let Some(t) = metrics_task {
        tasks.spawn(async move { ("metrics", t.await.map(|r| r.map_err(TelemetryError::from))) });
    }
    let mut first_error: Option<TelemetryError> = None;
    while let Some(joined) = tasks.join_next().await {
        let error = match joined {
            Ok((_, Ok(Ok(())))) => None,
            Ok((_, Ok(Err(e)))) => Some(e),
            Ok((task, Err(_))) => Some(TelemetryError::Panicked { task }),
            Err(_) => Some(TelemetryError::Panicked { task: "telemetry" }),
        };
        if let Some(e) = error {
            if first_error.is_none() {
                tracing::error!("telemetry: {e}; stopping its other tasks");
                let _ = run_stop.send(true);
                first_error = Some(e);
            }
        } else if first_error.is_none() && !*shutdown.borrow() {
            // A task that returns without an error before the daemon stops has lost its input.
            let _ = run_stop.send(true);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || reader_thread.join()).await;
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// What the reader thread reads: journald's directories (under `root`) and the filter.
struct JournalSource {
    dirs: Vec<PathBuf>,
    root: PathBuf,
    filter: Filter,
}

/// Says (once per change, in the log and in `status`) whether there is a journal to read.
fn note_missing_journal(src: &JournalSource, status: &StatusCell, noted: &mut Option<String>) {
    let now = missing_journal(&src.root, &src.dirs).map(|m| m.to_string());
    if now == *noted {
        return;
    }
    match &now {
        Some(why) => tracing::warn!("telemetry ships no journal entries: {why}"),
        None => tracing::info!("journal found; shipping its entries"),
    }
    status.update(|s| s.journal_missing = now.clone());
    *noted = now;
}

/// The reader thread: polls the journal, sends chunks, sleeps when caught up; reopens after an
/// error from the last position it handed out.
fn journal_loop(
    src: JournalSource,
    after: Option<Cursor>,
    tx: mpsc::Sender<Chunk>,
    poll: Duration,
    stop: Arc<AtomicBool>,
    status: Arc<StatusCell>,
) {
    let (dirs, filter, counters) = (src.dirs.clone(), &src.filter, status.counters.clone());
    let mut missing = None;
    note_missing_journal(&src, &status, &mut missing);
    let mut reader = JournalReader::new(dirs.clone(), after);
    // Position after the last chunk handed to the shipper: where to reopen after an error.
    let mut sent = after;
    let mut out = Vec::with_capacity(CHUNK_RECORDS);
    // Whether the last poll found entries: the first empty poll after some says "caught up".
    let mut reading = false;
    while !stop.load(Ordering::Relaxed) {
        match reader.poll(filter, &mut out, CHUNK_RECORDS) {
            Ok(p) => {
                let stats = reader.stats();
                counters.set_journal_missed(stats.missed_entries);
                counters.set_journal_unreadable(stats.unreadable_entries, stats.unreadable_files);
                if p.scanned == 0 {
                    note_missing_journal(&src, &status, &mut missing);
                    if std::mem::take(&mut reading) {
                        out = Vec::new();
                        let done = Chunk {
                            caught_up: true,
                            ..Chunk::default()
                        };
                        if tx.blocking_send(done).is_err() {
                            return;
                        }
                    }
                    std::thread::sleep(poll);
                    continue;
                }
                reading = true;
                let mut records = Vec::with_capacity(out.len());
                for jr in out.drain(..) {
                    records.extend(Record::from_journal(jr));
                }
                if tx
                    .blocking_send(Chunk {
                        records,
                        cursor: p.position,
                        ..Chunk::default()
                    })
                    .is_err()
                {
                    return;
                }
                sent = p.position;
            }
            Err(e) => {
                tracing::warn!(error = %e, "journal read failed; reopening in 5 s");
                out.clear();
                std::thread::sleep(READ_ERROR_DELAY);
                reader = JournalReader::new(dirs.clone(), sent);
            }
        }
    }
}
