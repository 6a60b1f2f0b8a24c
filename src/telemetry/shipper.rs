//! The queue between a source and CloudWatch Logs, and the loop that ships it.
//!
//! Records arrive in chunks (a chunk from the journal carries the journal cursor after it).
//! While CloudWatch keeps up they stay in memory — the journal already holds them on disk, so
//! writing them a second time would buy nothing — and the journal cursor advances only when
//! CloudWatch accepted them. When a PutLogEvents attempt fails, everything not yet accepted
//! (the window in flight first, then the memory queue, then every new chunk) is appended to the
//! spool with a group commit, and the journal cursor advances as soon as the spool is durable:
//! the reader keeps draining the journal at full speed during an outage, so journald may vacuum
//! without losing a line. Sources whose lines exist nowhere else (child output) always go
//! through the spool. A full spool stops taking chunks (the source pauses; counted and shown).
//! When memory holds more than its limit and CloudWatch is healthy, the loop simply stops taking
//! chunks (backpressure: the journal is the buffer).
//!
//! Shipping is by windows (see [`super::batch`]): one batch per stream, streams in parallel, the
//! next window only after the whole window was accepted. The spool is drained before memory, so
//! each stream stays in order.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::batch::{Batch, MAX_BATCH_BYTES, MAX_BATCH_EVENTS, WindowBuilder};
use super::journal::Cursor;
use super::record::Record;
use super::sink::LogsSink;
use super::spool::{Spool, SpoolError, SpoolPos};
use super::status::StatusCell;

/// A group of records from one source read at once.
#[derive(Debug, Default)]
pub struct Chunk {
    pub records: Vec<Record>,
    /// Journal position after these records (journal sources only).
    pub cursor: Option<Cursor>,
    /// The source has read everything there is for now (sent once, when it catches up).
    pub caught_up: bool,
    /// Told once these records are committed to the spool (durable-input sources).
    pub acks: Vec<super::child::ChildAck>,
}

#[derive(Debug, Clone)]
pub struct ShipperOptions {
    /// Send a partial batch once its oldest record waited this long.
    pub flush_interval: Duration,
    /// Memory queue bound; above it the shipper stops taking chunks (or spills when failing).
    pub mem_limit_bytes: usize,
    /// Every record goes through the spool (sources with no other durable copy).
    pub durable_input: bool,
    /// Where the journal cursor is saved (atomic rename), for journal sources.
    pub cursor_path: Option<PathBuf>,
}

/// Pauses while the spool is full before trying again.
const FULL_RETRY: Duration = Duration::from_millis(500);
/// Largest wait in the loop when nothing is due (status stays fresh, shutdown is seen at once
/// through the watch channel anyway).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

enum Source {
    Spool(SpoolPos),
    Mem,
}

struct InFlight {
    source: Source,
    batches: Arc<Vec<Batch>>,
    /// qseq range the window covers (memory windows).
    first: u64,
    end: u64,
    /// Set when the window's records were also written to the spool head while in flight.
    spooled_end: Option<SpoolPos>,
    task: JoinHandle<()>,
    started: Instant,
}

struct StreamBook {
    backlog: u64,
    last_shipped_ms: Option<i64>,
    lag_ms: Option<i64>,
}

pub struct Shipper {
    spool: Spool,
    sink: Arc<LogsSink>,
    opts: ShipperOptions,
    status: Arc<StatusCell>,
    mem: VecDeque<Record>,
    mem_bytes: usize,
    /// Per stream (bytes, events) in memory, to see when a full batch is ready.
    mem_streams: HashMap<Arc<str>, (usize, usize)>,
    mem_front_qseq: u64,
    next_qseq: u64,
    /// (end qseq, cursor) per chunk not yet durable.
    chunks: VecDeque<(u64, Cursor)>,
    saved_cursor: Option<Cursor>,
    inflight: Option<InFlight>,
    pending: Option<Chunk>,
    first_pending_at: Option<Instant>,
    /// Full windows were shipped since the last partial one: a backlog is being drained.
    draining: bool,
    /// Ship the partial tail now instead of after the flush interval (the source caught up at
    /// the end of a backlog; waiting would only delay it).
    flush_now: bool,
    books: HashMap<Arc<str>, StreamBook>,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot save the journal cursor to {path}: {source}")]
    Cursor {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Shipper {
    pub fn new(
        spool: Spool,
        sink: Arc<LogsSink>,
        opts: ShipperOptions,
        status: Arc<StatusCell>,
    ) -> Shipper {
        Shipper {
            spool,
            sink,
            opts,
            status,
            mem: VecDeque::new(),
            mem_bytes: 0,
            mem_streams: HashMap::new(),
            mem_front_qseq: 0,
            next_qseq: 0,
            chunks: VecDeque::new(),
            saved_cursor: None,
            inflight: None,
            pending: None,
            first_pending_at: None,
            draining: false,
            flush_now: false,
            books: HashMap::new(),
        }
    }

    /// Runs until `shutdown` turns true (or the source closes and everything is shipped).
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Chunk>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), ShipperError> {
        let mut rx_open = true;
        if !self.spool.is_empty() {
            self.first_pending_at = Some(Instant::now());
        }
        loop {
            if *shutdown.borrow() {
                break;
            }
            if self.inflight.is_none() && self.ready() {
                self.start_window()?;
            }
            if !rx_open
                && self.inflight.is_none()
                && self.mem.is_empty()
                && self.spool.is_empty()
                && self.pending.is_none()
            {
                break;
            }
            let failing = self.sink.failing.load(Ordering::Relaxed);
            if failing
                && (!self.mem.is_empty()
                    || self.inflight.as_ref().is_some_and(|f| {
                        matches!(f.source, Source::Mem) && f.spooled_end.is_none()
                    }))
            {
                self.spill()?;
            }
            if self.pending.is_some() {
                self.retry_pending()?;
            }
            let take = rx_open
                && self.pending.is_none()
                && (failing
                    || self.opts.durable_input
                    || self.mem_bytes < self.opts.mem_limit_bytes);
            let wake = self.next_wake(failing);
            tokio::select! {
                _ = shutdown.changed() => {}
                r = async { match self.inflight.as_mut() { Some(f) => (&mut f.task).await, None => std::future::pending().await } } => {
                    let _ = r;
                    self.finish_window()?;
                }
                c = rx.recv(), if take => match c {
                    Some(c) => self.on_chunk(c)?,
                    None => rx_open = false,
                },
                _ = tokio::time::sleep(wake) => {}
            }
            self.publish();
        }
        // Leave in-flight sends a moment to land so their records need not be sent again.
        if let Some(f) = self.inflight.as_mut()
            && tokio::time::timeout(Duration::from_secs(2), &mut f.task)
                .await
                .is_ok()
        {
            self.finish_window()?;
        }
        self.spool.commit()?;
        self.publish();
        Ok(())
    }

    fn next_wake(&self, failing: bool) -> Duration {
        let mut wake = IDLE_WAKE;
        // The flush timer runs only while something waits: a stale start time with nothing left
        // would make the loop wake every 5 ms, forever.
        if let Some(t) = self.first_pending_at
            && !(self.mem.is_empty() && self.spool.is_empty())
        {
            wake = wake.min(self.opts.flush_interval.saturating_sub(t.elapsed()));
        }
        if self.pending.is_some() {
            wake = wake.min(FULL_RETRY);
        }
        if self.inflight.is_some() && !failing {
            // A send that starts failing makes the loop spill; look at that flag regularly.
            wake = wake.min(Duration::from_millis(250));
        }
        wake.max(Duration::from_millis(5))
    }

    fn ready(&self) -> bool {
        if !self.spool.is_empty() {
            return true;
        }
        if self.mem.is_empty() {
            return false;
        }
        if self.flush_now {
            return true;
        }
        if self
            .first_pending_at
            .is_some_and(|t| t.elapsed() >= self.opts.flush_interval)
        {
            return true;
        }
        self.mem_streams
            .values()
            .any(|&(b, n)| b >= MAX_BATCH_BYTES || n >= MAX_BATCH_EVENTS)
            || self.mem_bytes >= self.opts.mem_limit_bytes
    }

    fn on_chunk(&mut self, c: Chunk) -> Result<(), ShipperError> {
        if c.caught_up && self.draining {
            self.flush_now = true;
        }
        let failing = self.sink.failing.load(Ordering::Relaxed);
        if self.opts.durable_input || failing {
            if failing {
                self.spill()?;
            }
            if !self.mem.is_empty() {
                // The memory queue did not fit the spool: this chunk must not overtake it.
                self.status.counters.set_paused(true);
                self.pending = Some(c);
                return Ok(());
            }
            if let Some(rest) = self.spool_chunk(c)? {
                self.status.counters.set_paused(true);
                tracing::warn!(
                    "spool full; pausing log sources until CloudWatch accepts the backlog"
                );
                self.pending = Some(rest);
            }
            Ok(())
        } else {
            self.accept_chunk(c, false)
        }
    }

    fn retry_pending(&mut self) -> Result<(), ShipperError> {
        if !self.mem.is_empty() {
            self.spill()?;
            if !self.mem.is_empty() {
                return Ok(());
            }
        }
        let Some(c) = self.pending.take() else {
            return Ok(());
        };
        match self.spool_chunk(c)? {
            None => self.status.counters.set_paused(false),
            Some(rest) => self.pending = Some(rest),
        }
        Ok(())
    }

    /// Spools as much of `c` as the budget takes now (committed and booked) and returns what is
    /// left of it, if anything. The journal cursor and the child acknowledgements go with the
    /// last piece only, so nothing is acknowledged before all of it is durable. A chunk larger
    /// than the whole budget thus goes in piece by piece as CloudWatch drains the spool, where
    /// waiting for room for all of it would stall its source for ever.
    fn spool_chunk(&mut self, mut c: Chunk) -> Result<Option<Chunk>, ShipperError> {
        let n = self.spool.append_prefix(&c.records)?;
        if n == 0 && !c.records.is_empty() {
            return Ok(Some(c));
        }
        self.spool.commit()?;
        if n == c.records.len() {
            self.accept_chunk(c, true)?;
            return Ok(None);
        }
        let rest = c.records.split_off(n);
        let head = Chunk {
            records: std::mem::replace(&mut c.records, rest),
            ..Chunk::default()
        };
        self.accept_chunk(head, true)?;
        Ok(Some(c))
    }

    /// Books a chunk that is either already in the spool (`spooled`) or goes to memory.
    fn accept_chunk(&mut self, c: Chunk, spooled: bool) -> Result<(), ShipperError> {
        if spooled {
            for a in &c.acks {
                a.done();
            }
        }
        let n = c.records.len() as u64;
        for r in &c.records {
            self.books
                .entry(r.stream.clone())
                .or_insert(StreamBook {
                    backlog: 0,
                    last_shipped_ms: None,
                    lag_ms: None,
                })
                .backlog += 1;
        }
        if n > 0 && self.first_pending_at.is_none() {
            self.first_pending_at = Some(Instant::now());
        }
        if spooled {
            // Durable now: memory is empty (spill came first), so the frontier moves past it.
            self.next_qseq += n;
            self.mem_front_qseq = self.next_qseq;
        } else {
            for r in c.records {
                let e = self.mem_streams.entry(r.stream.clone()).or_insert((0, 0));
                e.0 += r.batch_bytes();
                e.1 += 1;
                self.mem_bytes += r.message.len() + 64;
                self.mem.push_back(r);
            }
            self.next_qseq += n;
        }
        if let Some(cur) = c.cursor {
            self.chunks.push_back((self.next_qseq, cur));
        }
        self.advance_cursor()
    }

    /// Moves the window in flight (if from memory) and the memory queue into the spool.
    fn spill(&mut self) -> Result<(), ShipperError> {
        if let Some(f) = self.inflight.as_mut()
            && matches!(f.source, Source::Mem)
            && f.spooled_end.is_none()
        {
            let recs: Vec<Record> = f
                .batches
                .iter()
                .flat_map(|b| b.events.iter().cloned())
                .collect();
            match self.spool.append(&recs) {
                Ok(()) => f.spooled_end = Some(self.spool.end_pos()),
                Err(SpoolError::Full { .. }) => {
                    self.status.counters.set_paused(true);
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        if !self.mem.is_empty() {
            let recs: Vec<Record> = self.mem.iter().cloned().collect();
            match self.spool.append(&recs) {
                Ok(()) => {
                    self.mem.clear();
                    self.mem_bytes = 0;
                    self.mem_streams.clear();
                    self.mem_front_qseq = self.next_qseq;
                }
                Err(SpoolError::Full { .. }) => self.status.counters.set_paused(true),
                Err(e) => return Err(e.into()),
            }
        }
        self.spool.commit()?;
        self.advance_cursor()
    }

    fn lowest_undurable(&self) -> u64 {
        let mut low = if self.mem.is_empty() {
            self.next_qseq
        } else {
            self.mem_front_qseq
        };
        if let Some(f) = &self.inflight
            && matches!(f.source, Source::Mem)
            && f.spooled_end.is_none()
        {
            low = low.min(f.first);
        }
        low
    }

    fn advance_cursor(&mut self) -> Result<(), ShipperError> {
        let low = self.lowest_undurable();
        let mut newest = None;
        while self.chunks.front().is_some_and(|(end, _)| *end <= low) {
            newest = self.chunks.pop_front().map(|(_, c)| c);
        }
        if let (Some(c), Some(path)) = (newest, self.opts.cursor_path.as_ref())
            && self.saved_cursor != Some(c)
        {
            save_cursor(path, &c).map_err(|source| ShipperError::Cursor {
                path: path.clone(),
                source,
            })?;
            self.saved_cursor = Some(c);
        }
        Ok(())
    }

    fn start_window(&mut self) -> Result<(), ShipperError> {
        // A window started before the flush interval ran out was started because a batch was
        // full: a backlog is being drained. One started by the flush timer ends that.
        let flushing = self.flush_now;
        let by_size = !flushing
            && self
                .first_pending_at
                .is_some_and(|t| t.elapsed() < self.opts.flush_interval);
        if !flushing {
            self.draining = by_size;
        }
        let mut wb = WindowBuilder::new();
        let (source, first, end) = if !self.spool.is_empty() {
            let (_, pos) = self.spool.read(|r| {
                if wb.fits(&r) {
                    wb.push(r);
                    true
                } else {
                    false
                }
            })?;
            (Source::Spool(pos), 0, 0)
        } else {
            let first = self.mem_front_qseq;
            while let Some(r) = self.mem.pop_front() {
                if !wb.fits(&r) {
                    self.mem.push_front(r);
                    break;
                }
                if let Some(e) = self.mem_streams.get_mut(&r.stream) {
                    e.0 = e.0.saturating_sub(r.batch_bytes());
                    e.1 = e.1.saturating_sub(1);
                }
                self.mem_bytes = self.mem_bytes.saturating_sub(r.message.len() + 64);
                self.mem_front_qseq += 1;
                wb.push(r);
            }
            (Source::Mem, first, self.mem_front_qseq)
        };
        if self.mem.is_empty() {
            // Hand the backlog's memory back once it is gone.
            self.mem.shrink_to_fit();
            self.mem_streams.shrink_to_fit();
        }
        if flushing && self.mem.is_empty() {
            // The backlog's tail is on its way: back to batching by the flush interval.
            self.flush_now = false;
            self.draining = false;
        }
        if self.mem.is_empty() && self.spool.is_empty() {
            self.first_pending_at = None;
        } else {
            self.first_pending_at = Some(Instant::now());
        }
        if wb.is_empty() {
            if let Source::Spool(pos) = source {
                // Only unreadable records: acknowledge them away.
                self.spool.ack(pos)?;
                self.status
                    .counters
                    .add_spool_corrupt(std::mem::take(&mut self.spool.corrupt_records));
            }
            return Ok(());
        }
        let (batches, dropped) = wb.finish(super::now_ms());
        self.status.counters.add_dropped_too_old(dropped);
        let batches = Arc::new(batches);
        let sink = self.sink.clone();
        let shared = batches.clone();
        let task = tokio::spawn(async move {
            let mut hs = Vec::with_capacity(shared.len());
            for i in 0..shared.len() {
                let (sink, shared) = (sink.clone(), shared.clone());
                hs.push(tokio::spawn(async move { sink.ship(&shared[i]).await }));
            }
            for h in hs {
                let _ = h.await;
            }
        });
        self.inflight = Some(InFlight {
            source,
            batches,
            first,
            end,
            spooled_end: None,
            task,
            started: Instant::now(),
        });
        Ok(())
    }

    fn finish_window(&mut self) -> Result<(), ShipperError> {
        let Some(f) = self.inflight.take() else {
            return Ok(());
        };
        tracing::debug!(
            elapsed_ms = f.started.elapsed().as_millis() as u64,
            batches = f.batches.len(),
            events = f.batches.iter().map(|b| b.events.len()).sum::<usize>(),
            "window accepted"
        );
        let now = super::now_ms();
        for b in f.batches.iter() {
            let bk = self.books.entry(b.stream.clone()).or_insert(StreamBook {
                backlog: 0,
                last_shipped_ms: None,
                lag_ms: None,
            });
            bk.backlog = bk.backlog.saturating_sub(b.events.len() as u64);
            bk.last_shipped_ms = Some(now);
            bk.lag_ms = b
                .events
                .iter()
                .map(|e| e.timestamp_ms)
                .max()
                .map(|t| (now - t).max(0));
        }
        match f.source {
            Source::Spool(pos) => self.spool.ack(pos)?,
            Source::Mem => {
                if let Some(pos) = f.spooled_end {
                    self.spool.ack(pos)?;
                }
                let _ = (f.first, f.end);
            }
        }
        self.status
            .counters
            .add_spool_corrupt(std::mem::take(&mut self.spool.corrupt_records));
        if self.mem.is_empty() && self.spool.is_empty() {
            // A window read from the spool leaves the flush timer set until the spool is acked:
            // nothing waits any more. Buffers kept for a backlog's next bodies go too.
            self.first_pending_at = None;
            self.sink.release_buffers();
        }
        if self.pending.is_some() {
            self.retry_pending()?;
        }
        self.advance_cursor()
    }

    fn publish(&self) {
        let sink = &self.sink;
        let streams: Vec<_> = self
            .books
            .iter()
            .map(|(k, b)| {
                (
                    sink.stream_name(k),
                    super::status::StreamStatus {
                        name: sink.stream_name(k),
                        last_shipped_ms: b.last_shipped_ms,
                        lag_ms: b.lag_ms,
                        backlog_events: b.backlog,
                    },
                )
            })
            .collect();
        let (bytes, oldest) = (self.spool.backlog_bytes(), self.spool.oldest_ms());
        let durable = self.opts.durable_input;
        self.status.update(|s| {
            s.log_group = sink.group().to_string();
            for (k, v) in streams {
                s.streams.insert(k, v);
            }
        });
        // Two shippers share the snapshot, each with its own spool.
        let part = if durable { "child" } else { "journal" };
        self.status.set_spool_part(part, bytes, oldest);
    }
}

/// Writes the cursor atomically (temp file + rename): a crash leaves the old or the new one.
pub fn save_cursor(path: &std::path::Path, c: &Cursor) -> std::io::Result<()> {
    crate::fsutil::replace_unsynced(path, c.to_text().as_bytes())
}

/// Reads a saved cursor; `None` when there is none (first start) or it is unreadable (logged).
pub fn load_cursor(path: &std::path::Path) -> Option<Cursor> {
    let text = std::fs::read_to_string(path).ok()?;
    match Cursor::parse(&text) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable journal cursor; reading the journal from its start");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::Message;
    use crate::telemetry::sink::Backoff;
    use crate::telemetry::spool::SpoolBudget;

    /// A chunk larger than the whole spool budget (a child that printed a burst while the
    /// budget is small) goes through the spool in pieces instead of waiting for room that can
    /// never be: every line arrives.
    #[test]
    fn a_chunk_larger_than_the_spool_is_shipped_in_pieces() {
        let ds = hybrid_devstack::Devstack::spawn(hybrid_devstack::Config::default())
            .expect("start devstack");
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for about 40 of the 200 records below.
        let (spool, _) = Spool::open(dir.path(), SpoolBudget::new(8 << 10)).expect("open spool");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let status = StatusCell::new();
        let shipped = rt.block_on(async {
            let sink = Arc::new(LogsSink::new(
                crate::telemetry::devstack_logs_client(&ds.url),
                "/test/group".into(),
                "{node}/{unit}".into(),
                "node".into(),
                Backoff::default(),
                status.counters.clone(),
            ));
            let opts = ShipperOptions {
                flush_interval: Duration::from_millis(50),
                mem_limit_bytes: 1 << 20,
                durable_input: true,
                cursor_path: None,
            };
            let shipper = Shipper::new(spool, sink, opts, status.clone());
            let (tx, rx) = mpsc::channel(4);
            let (stop_tx, stop_rx) = watch::channel(false);
            let task = tokio::spawn(shipper.run(rx, stop_rx));
            let now = crate::telemetry::now_ms();
            let records = (0..200)
                .map(|i| Record {
                    stream: "containerd".into(),
                    timestamp_ms: now,
                    message: Message::new(format!("{i:05} {}", "x".repeat(150))).expect("message"),
                })
                .collect();
            tx.send(Chunk {
                records,
                caught_up: true,
                ..Chunk::default()
            })
            .await
            .expect("send chunk");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && status.counters.snapshot().shipped < 200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = stop_tx.send(true);
            let _ = task.await;
            status.counters.snapshot().shipped
        });
        assert_eq!(shipped, 200, "lines shipped of a 200-line chunk");
    }

    /// CloudWatch Logs scripted in memory: fails the first `fail` calls with a 503, refuses
    /// (as invalid) any call holding an event with "BAD" in it, answers ResourceNotFound until
    /// the stream was created when `missing`; records what it accepted, per stream, in order.
    #[derive(Default)]
    struct Scripted {
        fail: std::sync::atomic::AtomicU32,
        missing: std::sync::atomic::AtomicBool,
        accepted: std::sync::Mutex<HashMap<String, Vec<String>>>,
        puts: std::sync::atomic::AtomicU32,
        creates: std::sync::atomic::AtomicU32,
    }

    use crate::telemetry::sink::{Call, CallError, LogsApi, RejectedInfo};

    impl LogsApi for Scripted {
        fn put_log_events<'a>(
            &'a self,
            _group: &'a str,
            stream: &'a str,
            events: &'a [Record],
        ) -> Call<'a, Option<RejectedInfo>> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let err = |code: &str, status, message: &str| {
                Err(CallError {
                    code: Some(code.into()),
                    status: Some(status),
                    message: message.into(),
                })
            };
            let result = if self.missing.load(Ordering::SeqCst) {
                err(
                    "ResourceNotFoundException",
                    400,
                    "The specified log stream does not exist.",
                )
            } else if self
                .fail
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                err("ServiceUnavailableException", 503, "try again")
            } else if events.iter().any(|e| e.message.as_str().contains("BAD")) {
                err(
                    "InvalidParameterException",
                    400,
                    "Log event message is invalid",
                )
            } else {
                let mut acc = self.accepted.lock().expect("lock");
                acc.entry(stream.to_string())
                    .or_default()
                    .extend(events.iter().map(|e| e.message.as_str().to_string()));
                Ok(None)
            };
            Box::pin(async move { result })
        }

        fn create_log_group<'a>(&'a self, _group: &'a str) -> Call<'a, ()> {
            Box::pin(async { Ok(()) })
        }

        fn create_log_stream<'a>(&'a self, _group: &'a str, _stream: &'a str) -> Call<'a, ()> {
            self.creates.fetch_add(1, Ordering::SeqCst);
            self.missing.store(false, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
    }

    /// Runs a shipper over `api` with `chunks` (records named `<stream> <n>`), until `want`
    /// events are shipped or rejected; returns the status counters. Backoff 1-4 ms.
    async fn ship_through(
        api: Arc<Scripted>,
        chunks: Vec<Vec<(&'static str, String)>>,
        want: u64,
        spool_budget: u64,
    ) -> (crate::telemetry::status::CounterSnapshot, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, _) =
            Spool::open(dir.path(), SpoolBudget::new(spool_budget)).expect("open spool");
        let status = StatusCell::new();
        let sink = Arc::new(
            LogsSink::with_api(
                api,
                "/test/group".into(),
                "{node}/{unit}".into(),
                "node".into(),
                Backoff {
                    base: Duration::from_millis(1),
                    cap: Duration::from_millis(4),
                },
                status.counters.clone(),
            )
            .with_jitter(Arc::new(crate::retry::FixedJitter(1.0))),
        );
        let opts = ShipperOptions {
            flush_interval: Duration::from_millis(5),
            mem_limit_bytes: 1 << 20,
            durable_input: false,
            cursor_path: None,
        };
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(Shipper::new(spool, sink, opts, status.clone()).run(rx, stop_rx));
        let now = crate::telemetry::now_ms();
        for records in chunks {
            let records = records
                .into_iter()
                .map(|(stream, text)| Record {
                    stream: stream.into(),
                    timestamp_ms: now,
                    message: Message::new(text).expect("message"),
                })
                .collect();
            tx.send(Chunk {
                records,
                caught_up: true,
                ..Chunk::default()
            })
            .await
            .expect("send chunk");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = status.counters.snapshot();
            if c.shipped + c.rejected >= want || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = stop_tx.send(true);
        let _ = task.await;
        (status.counters.snapshot(), dir)
    }

    fn lines(stream: &'static str, from: usize, n: usize) -> Vec<(&'static str, String)> {
        (from..from + n)
            .map(|i| (stream, format!("{stream} {i:05}")))
            .collect()
    }

    fn in_order(api: &Scripted, stream: &str, n: usize) {
        let acc = api.accepted.lock().expect("lock");
        let got = acc
            .get(&format!("node/{stream}"))
            .cloned()
            .unwrap_or_default();
        let want: Vec<String> = (0..n).map(|i| format!("{stream} {i:05}")).collect();
        assert_eq!(got, want, "{stream}: each line once, in order");
    }

    /// Reachable: everything ships once, in order per stream.
    #[tokio::test]
    async fn everything_ships_once_in_order() {
        let api = Arc::new(Scripted::default());
        let mut a = lines("kubelet", 0, 600);
        a.extend(lines("containerd", 0, 400));
        let (c, _dir) = ship_through(api.clone(), vec![a], 1000, 16 << 20).await;
        assert_eq!((c.shipped, c.rejected, c.retries), (1000, 0, 0));
        in_order(&api, "kubelet", 600);
        in_order(&api, "containerd", 400);
    }

    /// The first eight calls fail: the shipper spills to the spool and retries with backoff;
    /// after, every line arrives once, in order, nothing rejected.
    #[tokio::test]
    async fn failures_spill_and_retry_then_everything_arrives_in_order() {
        let api = Arc::new(Scripted::default());
        api.fail.store(8, Ordering::SeqCst);
        let chunks = (0..5).map(|k| lines("kubelet", k * 100, 100)).collect();
        let (c, _dir) = ship_through(api.clone(), chunks, 500, 16 << 20).await;
        assert_eq!((c.shipped, c.rejected), (500, 0));
        assert!(c.retries >= 8, "{c:?}");
        in_order(&api, "kubelet", 500);
    }

    /// One bad event among 100: the batch is halved down to it; it alone is rejected.
    #[tokio::test]
    async fn one_bad_event_costs_only_itself() {
        let api = Arc::new(Scripted::default());
        let mut l = lines("kubelet", 0, 100);
        l[37].1 = "kubelet BAD".into();
        let (c, _dir) = ship_through(api.clone(), vec![l], 100, 16 << 20).await;
        assert_eq!((c.shipped, c.rejected), (99, 1));
        let acc = api.accepted.lock().expect("lock");
        assert_eq!(acc["node/kubelet"].len(), 99);
        assert!(acc["node/kubelet"].iter().all(|m| !m.contains("BAD")));
        // log2(100) halvings and their siblings, not 100 calls.
        assert!(
            api.puts.load(Ordering::SeqCst) <= 16,
            "{} calls",
            api.puts.load(Ordering::SeqCst)
        );
    }

    /// A stream that does not exist yet is created once, then the batch is replayed.
    #[tokio::test]
    async fn a_missing_stream_is_created_then_the_batch_replayed() {
        let api = Arc::new(Scripted::default());
        api.missing.store(true, Ordering::SeqCst);
        let (c, _dir) =
            ship_through(api.clone(), vec![lines("kubelet", 0, 50)], 50, 16 << 20).await;
        assert_eq!(c.shipped, 50);
        assert_eq!(api.creates.load(Ordering::SeqCst), 1);
        in_order(&api, "kubelet", 50);
    }

    /// A spool far smaller than the backlog (8 KiB for about 60 KB) while the service fails:
    /// nothing is dropped, and all of it ships, in order, once the service answers.
    #[tokio::test]
    async fn a_spool_smaller_than_the_backlog_drops_nothing() {
        let api = Arc::new(Scripted::default());
        api.fail.store(30, Ordering::SeqCst);
        let chunks = (0..20).map(|k| lines("kubelet", k * 50, 50)).collect();
        let (c, _dir) = ship_through(api.clone(), chunks, 1000, 8 << 10).await;
        assert_eq!((c.shipped, c.rejected, c.dropped_too_old), (1000, 0, 0));
        in_order(&api, "kubelet", 1000);
    }
}
