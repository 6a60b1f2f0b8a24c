//! What each fuzz target does with one input: shared by the libFuzzer binaries
//! (`fuzz/fuzz_targets/*.rs`) and the corpus replay that runs on stable in CI
//! (`tests/fuzz_corpus.rs`), both of which include this file with `#[path]`.
//!
//! Every function feeds the bytes to the agent's real parsing code through its public interface
//! (files for the config loader, the journal reader and the spool; an HTTP answer for the SSM
//! and IAM Roles Anywhere clients; the sink's classification for CloudWatch Logs). A panic is a
//! finding: besides the code's own panics, a few harness assertions state what the caller relies
//! on (an appended spool record is read back, rejected events never exceed those sent).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hybrid_agent::aws::clock::{ManualClock, SkewChange, SkewedClock};
use hybrid_agent::aws::http::Answer;
use hybrid_agent::config::{self, AgentConfigSource, Env, LoadContext, NodeInput};
use hybrid_agent::paths::HostPaths;
use hybrid_agent::telemetry::journal::reader::{Filter, JournalReader};
use hybrid_agent::telemetry::record::{Message, Record};
use hybrid_agent::telemetry::spool::{Spool, SpoolBudget};

/// One target's entry point: any bytes in, a panic only on a finding.
pub type Target = fn(&[u8]);

/// The targets, as `scripts/fuzz` and `fuzz/corpus/<name>/` name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("agent_toml", agent_toml),
    ("nodeconfig", nodeconfig),
    ("journal", journal),
    ("spool", spool),
    ("ssm_response", ssm_response),
    ("iam_ra_response", iam_ra_response),
    ("cloudwatch_response", cloudwatch_response),
];

/// The "now" of the response targets: 2026-01-01T00:00:00Z (the corpus' expiries sit near it).
const NOW_EPOCH_SECS: u64 = 1_767_225_600;

/// A scratch directory of this process for `target` (created once, emptied by the caller).
fn scratch(target: &str) -> PathBuf {
    let base = std::env::var_os("HYBRID_AGENT_FUZZ_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("hybrid-agent-fuzz-{}-{target}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
    dir
}

fn reset(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("recreate the fuzz scratch directory");
}

/// The agent TOML (`--config FILE`) through the loader `hybrid-agent config show` uses, then
/// the output it prints.
pub fn agent_toml(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| scratch("agent_toml"));
    let path = dir.join("config.toml");
    std::fs::write(&path, data).expect("write config.toml");
    let paths = HostPaths::new(dir.join("root"));
    let env = Env::default();
    let source = AgentConfigSource::Explicit(path);
    let ctx = LoadContext {
        paths: &paths,
        env: &env,
        agent_config: &source,
    };
    match config::load_agent(ctx) {
        Ok(agent) => {
            let _ = serde_json::to_string(&agent);
        }
        Err(problems) => {
            let _ = problems.to_string();
        }
    }
}

/// A NodeConfig (`--config-source file://…`) through the loader `join` uses, with the agent
/// defaults, then the output `config show` prints.
pub fn nodeconfig(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| scratch("nodeconfig"));
    let path = dir.join("nodeconfig.yaml");
    std::fs::write(&path, data).expect("write nodeconfig.yaml");
    let paths = HostPaths::new(dir.join("root"));
    let env = Env::default();
    let ctx = LoadContext {
        paths: &paths,
        env: &env,
        agent_config: &AgentConfigSource::Default,
    };
    let node = NodeInput {
        config_source: Some(format!("file://{}", path.display())),
        ..Default::default()
    };
    match config::load(ctx, &node) {
        Ok(config) => {
            let _ = serde_json::to_string(&config);
        }
        Err(problems) => {
            let _ = problems.to_string();
        }
    }
}

/// Polls that drain one journal file: more would mean the reader does not make progress.
const JOURNAL_MAX_POLLS: usize = 64;

/// One journal file (`system.journal`) read by the reader the daemon ships from, everything
/// shipped (priority up to debug), the units the agent ships by default plus one identifier.
pub fn journal(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| scratch("journal"));
    reset(dir);
    std::fs::write(dir.join("system.journal"), data).expect("write system.journal");
    let filter = Filter {
        names: ["kubelet", "containerd", "hybrid-agent", "fuzz"]
            .iter()
            .map(|n| (n.to_string(), Arc::from(*n)))
            .collect(),
        max_priority: 7,
    };
    let mut reader = JournalReader::new(vec![dir.clone()], None);
    let mut out = Vec::new();
    for _ in 0..JOURNAL_MAX_POLLS {
        match reader.poll(&filter, &mut out, 256) {
            Ok(p) if p.scanned > 0 => {}
            _ => break,
        }
        out.clear();
    }
    let _ = reader.stats();
    if let Some(c) = reader.position() {
        let text = c.to_text();
        assert_eq!(
            hybrid_agent::telemetry::journal::reader::Cursor::parse(&text).ok(),
            Some(c),
            "a cursor does not round-trip"
        );
    }
}

/// Spool input: `[flags][u16 ack offset][u16 split][u8 take]` then segment bytes. Flags bit 0
/// writes an `ack` file (segment 1 at that offset), bit 1 splits the bytes into two segments
/// at `split`. `take`: records the first read accepts before refusing one (0 = all).
const SPOOL_HEAD: usize = 6;

/// Segment files as a crash or a bad disk leaves them: open (repairs the tail), read (skips what
/// is corrupt), ack, then append and commit one record, which must be read back.
pub fn spool(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| scratch("spool"));
    reset(dir);
    let (head, body) = data.split_at(data.len().min(SPOOL_HEAD));
    let byte = |i: usize| head.get(i).copied().unwrap_or(0);
    let flags = byte(0);
    let ack_offset = u16::from_le_bytes([byte(1), byte(2)]);
    let split = usize::from(u16::from_le_bytes([byte(3), byte(4)])).min(body.len());
    let take = usize::from(byte(5));
    let seg = |id: u64| dir.join(format!("{id:020}.seg"));
    if flags & 2 != 0 {
        std::fs::write(seg(1), &body[..split]).expect("write segment 1");
        std::fs::write(seg(2), &body[split..]).expect("write segment 2");
    } else {
        std::fs::write(seg(1), body).expect("write segment 1");
    }
    let with_ack = flags & 1 != 0;
    if with_ack {
        std::fs::write(dir.join("ack"), format!("1 {ack_offset}\n")).expect("write ack");
    }
    let budget = SpoolBudget::new(64 << 20);
    let Ok((mut spool, _recovery)) = Spool::open(dir, budget) else {
        return;
    };
    let mut n = 0usize;
    let Ok((_, pos)) = spool.read(|_| {
        n += 1;
        take == 0 || n <= take
    }) else {
        return;
    };
    if spool.ack(pos).is_err() {
        return;
    }
    let marker = Record {
        stream: Arc::from("fuzz"),
        timestamp_ms: 1,
        message: Message::new("appended after recovery".to_string()).expect("valid message"),
    };
    if spool.append(std::slice::from_ref(&marker)).is_err() || spool.commit().is_err() {
        return;
    }
    let mut last = None;
    let _ = spool.read(|r| {
        last = Some(r);
        true
    });
    // A mid-record ack offset (a damaged `ack` file) may still hide what follows it: that is
    // the resynchronisation question, not asserted here.
    if !with_ack {
        assert_eq!(
            last.as_ref(),
            Some(&marker),
            "a record appended after recovery is not read back"
        );
    }
}

/// An HTTP answer in the corpus' text form: a status line (`200`), `name: value` header lines,
/// a blank line, the body. Only `date` and `x-amzn-errortype` matter to the clients.
struct Http<'a> {
    status: u16,
    date: Option<String>,
    error_type: Option<String>,
    body: &'a [u8],
}

fn http(data: &[u8]) -> Http<'_> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(200);
    let (mut date, mut error_type) = (None, None);
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "date" => date = Some(v.trim().to_string()),
                "x-amzn-errortype" => error_type = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
    Http {
        status,
        date,
        error_type,
        body,
    }
}

fn http_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            hybrid_agent::aws::http::client(&Default::default()).expect("build the HTTP client")
        })
        .clone()
}

/// A fresh clock at [`NOW_EPOCH_SECS`], corrected by the answer's `Date` as a real call does.
fn clock_for(h: &Http<'_>) -> (Arc<SkewedClock>, SkewChange) {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_EPOCH_SECS);
    let clock = Arc::new(SkewedClock::new(Arc::new(ManualClock::new(now))));
    let skew = match &h.date {
        Some(d) => clock.observe(d, now),
        None => SkewChange::Unchanged,
    };
    (clock, skew)
}

fn answer(h: &Http<'_>, skew: SkewChange) -> Answer {
    Answer {
        status: h.status,
        error_type: h.error_type.clone(),
        body: h.body.to_vec(),
        skew,
    }
}

/// One SSM answer (awsJson 1.1) taken as RegisterManagedInstance's,
/// RequestManagedInstanceRoleToken's and UpdateManagedInstancePublicKey's.
pub fn ssm_response(data: &[u8]) {
    let h = http(data);
    let (clock, skew) = clock_for(&h);
    let endpoint = "https://ssm.us-east-1.amazonaws.com/"
        .parse()
        .expect("endpoint URL");
    let client =
        hybrid_agent::identity::ssm::SsmClient::new(http_client(), endpoint, "us-east-1", clock)
            .expect("SSM client");
    client.fuzz_answer(&answer(&h, skew));
}

/// One IAM Roles Anywhere CreateSession answer (restJson).
pub fn iam_ra_response(data: &[u8]) {
    let h = http(data);
    let (clock, skew) = clock_for(&h);
    let settings = hybrid_agent::identity::iam_ra::IamRaSettings {
        endpoint: "https://rolesanywhere.us-east-1.amazonaws.com/"
            .parse()
            .expect("endpoint URL"),
        region: "us-east-1".into(),
        trust_anchor_arn: "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/t".into(),
        profile_arn: "arn:aws:rolesanywhere:us-east-1:111122223333:profile/p".into(),
        role_arn: "arn:aws:iam::111122223333:role/node".into(),
        certificate_path: PathBuf::from("/nonexistent/cert.pem"),
        private_key_path: PathBuf::from("/nonexistent/key.pem"),
        session_name: None,
        duration: Duration::from_secs(3600),
    };
    let source = hybrid_agent::identity::iam_ra::IamRaSource::new(http_client(), settings, clock)
        .expect("IAM RA source");
    source.fuzz_answer(&answer(&h, skew));
}

/// A CloudWatch Logs answer to PutLogEvents. The AWS SDK parses the wire form; what is ours is
/// what the sink does with the result: the error class (retry, create, reject), whether a
/// refusal is about the events (split the batch), and how many events a
/// `rejectedLogEventsInfo` covers. Input: `status` (or `none` for no response), `code:`,
/// `message:`, `events:` (batch size), `tooOld:`, `tooNew:`, `expired:` lines.
pub fn cloudwatch_response(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let status = lines.next().and_then(|l| l.trim().parse::<u16>().ok());
    let (mut code, mut message, mut events) = (None, String::new(), 1u64);
    let (mut too_old, mut too_new, mut expired) = (None, None, None);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k.trim() {
            "code" => code = Some(v.to_string()),
            "message" => message = v.to_string(),
            // A batch holds at most 10,000 events (PutLogEvents quota); the sink counts them in u64.
            "events" => events = v.parse::<u16>().map_or(1, u64::from),
            "tooOld" => too_old = v.parse().ok(),
            "tooNew" => too_new = v.parse().ok(),
            "expired" => expired = v.parse().ok(),
            _ => {}
        }
    }
    hybrid_agent::telemetry::sink::fuzz_response(
        code.as_deref(),
        status,
        &message,
        [too_old, too_new, expired],
        events,
    );
}
