//! `join`, `leave` and `upgrade`: the phases that take a host from nothing to a running hybrid
//! node and back, each one transactional.
//!
//! `join` runs preflight → identity → install → render → start → wait. Every host change goes
//! through one [`Journal`] persisted in the state directory; things done elsewhere (a fresh SSM
//! registration, started processes) are noted in it too. When a phase fails, the changes made
//! elsewhere are compensated (components stopped, the fresh registration deregistered) and the
//! journal is rolled back — the host is left as it was — and the error names the phase. A run
//! that is killed leaves its journal behind; the next `join`, `leave` or `upgrade` rolls it back
//! first. A successful join keeps its journal as the join record that `leave` unwinds.
//!
//! `join` again with the same configuration on a healthy node changes nothing and says so.
//! `--dry-run` prints every file it would write and every action it would take, and changes
//! nothing (it reads: the manifest, the registration, DescribeCluster when credentials exist).

pub mod cloud;
pub mod components;
pub mod drain;
pub mod leave;
pub mod ready;
pub mod record;
pub mod refresh;
pub mod sandbox;
pub mod upgrade;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::Instrument as _;

use crate::config::{AgentConfig, Config, Provider, Region};
use crate::exit::ExitCode;
use crate::identity::register::RegisterOutcome;
use crate::identity::setup::{IdentityEnv, JoinError as IdentityError, PROVIDER_FILE};
use crate::identity::store::{CREDENTIALS_STATE_FILE, Registration};
use crate::install::checksum::Sha256;
use crate::install::download::FetchSettings;
use crate::install::manifest;
use crate::install::progress::Progress;
use crate::install::tracker::Tracker;
use crate::install::{InstallError, InstallRequest, Installer, Source};
use crate::node::cluster::{Described, PreflightError};
use crate::node::host::{self, HostAction, HostActions, HostError, PackageManager};
use crate::node::land::{Journal, LandError, Note};
use crate::node::{self, ClusterDetails, ClusterError, NodeSpec, RenderError, RenderInput};
use crate::paths::{HostPaths, STATE_DIR};
use crate::supervise::{ComponentName, SuperviseError};

use cloud::CloudError;
use components::Components;
use record::{BACKUP_DIR, FileDigest, JOIN_JOURNAL, NodeRecord, RecordError, TXN_JOURNAL};

/// How long `join` and `upgrade` wait for containerd and kubelet to answer by default. kubelet
/// on a small box takes ~10–30 s to serve /healthz after start.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Unix socket paths longer than this cannot be bound (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The phases of `join`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Preflight,
    Identity,
    Install,
    Render,
    Start,
    Wait,
    /// Saving the node record and the join journal once everything is up. Not a phase one can
    /// skip (not in [`Phase::ALL`]); it exists so a failure there is not blamed on `wait`.
    Commit,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Preflight,
        Phase::Identity,
        Phase::Install,
        Phase::Render,
        Phase::Start,
        Phase::Wait,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Identity => "identity",
            Phase::Install => "install",
            Phase::Render => "render",
            Phase::Start => "start",
            Phase::Wait => "wait",
            Phase::Commit => "commit",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where artifacts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// The agent config's mirror, else the public manifest.
    Default,
    /// A mirror base URL (`…/manifest.yaml` is appended) or a manifest URL.
    Mirror(String),
    /// An offline bundle.
    Bundle(PathBuf),
}

impl ArtifactSource {
    /// The install source, given the agent configuration.
    pub fn resolve(&self, agent: &AgentConfig) -> Source {
        self.resolve_in(agent, "")
    }

    /// [`ArtifactSource::resolve`] for a node in `region`: the public manifest is China's for
    /// `cn-*` regions (nodeadm internal/aws/manifest.go).
    pub fn resolve_in(&self, agent: &AgentConfig, region: &str) -> Source {
        match self {
            ArtifactSource::Bundle(p) => Source::Bundle(p.clone()),
            ArtifactSource::Mirror(url) => Source::Mirror {
                manifest_url: manifest_url(url),
            },
            ArtifactSource::Default => Source::Mirror {
                manifest_url: agent
                    .artifacts
                    .mirror_url
                    .as_ref()
                    .map(|u| manifest_url(u.expose().as_str()))
                    .unwrap_or_else(|| manifest::default_manifest_url(region).to_owned()),
            },
        }
    }
}

/// A mirror base URL becomes `<base>/manifest.yaml`; a URL naming a `.yaml`/`.json` file is used
/// as is.
pub fn manifest_url(url: &str) -> String {
    let trimmed = url.trim_end_matches('/');
    if [".yaml", ".yml", ".json"]
        .iter()
        .any(|s| trimmed.ends_with(s))
    {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/manifest.yaml")
    }
}

/// The fetcher settings for the agent configuration.
pub fn fetch_settings(agent: &AgentConfig, allow_insecure: bool) -> FetchSettings {
    FetchSettings {
        allow_insecure,
        proxy: agent.network.proxy.as_ref().map(|u| u.expose().to_string()),
        no_proxy: agent.network.no_proxy.clone(),
        ca_bundle: agent.network.ca_bundle.clone(),
        initial_backoff: None,
    }
}

/// What `join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub skip: Vec<Phase>,
    pub dry_run: bool,
    pub reregister: bool,
    /// `1.31`, `1.31.2`, or `None` for the cluster's version (DescribeCluster).
    pub kubernetes_version: Option<String>,
    pub source: ArtifactSource,
    pub allow_insecure_mirror: bool,
    /// How long to wait for containerd, then kubelet, to be healthy.
    pub wait_timeout: Duration,
    pub progress: Progress,
}

/// What `join` did.
#[derive(Debug, Clone, Default)]
pub struct JoinReport {
    /// The configuration was already applied and healthy: nothing was changed.
    pub noop: bool,
    /// One line per phase, for the user.
    pub lines: Vec<String>,
    /// `--dry-run`: every file and action, in order.
    pub planned: Vec<String>,
    pub warnings: Vec<String>,
    pub node_name: Option<String>,
}

/// Why a phase failed.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("{0}")]
    Preflight(String),
    #[error(transparent)]
    Identity(Box<IdentityError>),
    #[error(transparent)]
    Install(Box<InstallError>),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checks(Box<PreflightError>),
    #[error(transparent)]
    Host(Box<HostError>),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error(transparent)]
    Land(#[from] LandError),
    #[error(transparent)]
    Supervise(Box<SuperviseError>),
    #[error(transparent)]
    Cloud(#[from] CloudError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Sandbox(Box<sandbox::SandboxError>),
    #[error("{component} did not become healthy within {waited:?}: {detail}")]
    Unhealthy {
        component: ComponentName,
        waited: Duration,
        detail: String,
    },
    #[error(transparent)]
    NodeReady(#[from] ready::ReadyError),
    #[error("{0}")]
    Other(String),
}

// The large errors are boxed so every phase's `Result` stays small.
impl From<IdentityError> for PhaseError {
    fn from(e: IdentityError) -> Self {
        PhaseError::Identity(Box::new(e))
    }
}

impl From<InstallError> for PhaseError {
    fn from(e: InstallError) -> Self {
        PhaseError::Install(Box::new(e))
    }
}

impl From<sandbox::SandboxError> for PhaseError {
    fn from(e: sandbox::SandboxError) -> Self {
        PhaseError::Sandbox(Box::new(e))
    }
}

impl From<PreflightError> for PhaseError {
    fn from(e: PreflightError) -> Self {
        PhaseError::Checks(Box::new(e))
    }
}

impl From<HostError> for PhaseError {
    fn from(e: HostError) -> Self {
        PhaseError::Host(Box::new(e))
    }
}

impl From<SuperviseError> for PhaseError {
    fn from(e: SuperviseError) -> Self {
        PhaseError::Supervise(Box::new(e))
    }
}

/// A failed `join`: which phase, why, and what the rollback did.
#[derive(Debug, thiserror::Error)]
#[error("join failed in the {phase} phase: {}. {}", source.to_string().trim_end_matches('.'), rollback_summary(.rollback_problems))]
pub struct JoinFailure {
    pub phase: Phase,
    #[source]
    pub source: PhaseError,
    /// Empty when the rollback restored everything.
    pub rollback_problems: Vec<String>,
}

fn rollback_summary(problems: &[String]) -> String {
    if problems.is_empty() {
        "Everything this run changed was rolled back; the host is as it was".to_owned()
    } else {
        format!(
            "The rollback could not undo everything: {}",
            problems.join("; ")
        )
    }
}

impl JoinFailure {
    /// The documented exit code (src/exit.rs).
    pub fn exit_code(&self) -> ExitCode {
        match &self.source {
            PhaseError::Identity(e) => e.exit_code(),
            _ => ExitCode::Failure,
        }
    }
}

/// What a compensation must undo, in memory (the journal's notes cover a killed run).
enum Compensation {
    Deregister { instance_id: String, region: Region },
    Stop(Box<Components>),
}

/// A resolved path as the host path the journal records (`--root` stripped).
pub fn host_path(paths: &HostPaths, real: &Path) -> Option<PathBuf> {
    real.strip_prefix(paths.root())
        .ok()
        .map(|rel| Path::new("/").join(rel))
}

/// A unique name for one run's backups.
fn run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{}-{}", now.unix_timestamp(), std::process::id())
}

/// The digest of every input that shapes the node: a second `join` with the same digest on a
/// healthy node has nothing to do.
fn config_digest(config: &Config, opts: &JoinOptions, spec: &NodeSpec) -> String {
    let node = &config.node;
    let identity = match &node.provider {
        Provider::Ssm { activation_id, .. } => format!("ssm:{activation_id}"),
        Provider::IamRolesAnywhere {
            node_name,
            role_arn,
            ..
        } => format!("iam-ra:{node_name}:{role_arn}"),
    };
    let doc = serde_json::json!({
        "spec": spec,
        "endpoint": node.cluster.api_server_endpoint.as_ref().map(|u| u.expose().to_string()),
        "ca": node.cluster.certificate_authority.as_ref().map(|c| Sha256::of_bytes(c).to_hex()),
        "cidr": node.cluster.cidr,
        "identity": identity,
        "credentials_file": config.agent.credentials.file,
        "profile": config.agent.credentials.profile,
        "enable_credentials_file": node.enable_credentials_file,
        "backend": format!("{:?}", config.agent.supervisor.backend),
        "version": opts.kubernetes_version,
    });
    Sha256::of_bytes(doc.to_string().as_bytes()).to_hex()
}

/// Whether the cgroup driver is systemd's for this backend choice.
fn systemd_cgroups(paths: &HostPaths, agent: &AgentConfig) -> bool {
    match agent.supervisor.backend {
        crate::config::SupervisorBackend::Systemd => true,
        crate::config::SupervisorBackend::Process => false,
        crate::config::SupervisorBackend::Auto => {
            crate::supervise::auto::systemd_booted(paths.root())
        }
    }
}

/// Rolls back a journal left by a run that was killed: stops what it started, deregisters
/// what it registered, undoes its files. Returns a line for the user, or `None` when there was
/// nothing to recover.
pub async fn recover(paths: &HostPaths, agent: &AgentConfig) -> Result<Option<String>, PhaseError> {
    let Some(mut txn) = Journal::load(paths.clone(), Path::new(TXN_JOURNAL))? else {
        return Ok(None);
    };
    let mut problems = Vec::new();
    for note in txn.notes().into_iter().rev() {
        match note {
            Note::Started { component, program } => {
                let name = if component == "kubelet" {
                    ComponentName::Kubelet
                } else {
                    ComponentName::Containerd
                };
                let rec = record::ComponentRecord {
                    name,
                    program,
                    args: Vec::new(),
                    env: Vec::new(),
                    probe: record::ProbeRecord::HttpGet { url: String::new() },
                    environment_file: None,
                };
                match Components::connect(
                    paths,
                    &agent.supervisor.backend,
                    std::slice::from_ref(&rec),
                )
                .await
                {
                    Ok(c) => {
                        if let Err(e) = c.stop(name).await {
                            problems.push(format!("stop {name}: {e}"));
                        }
                    }
                    Err(e) => problems.push(format!("stop {name}: {e}")),
                }
            }
            Note::Registered {
                instance_id,
                region,
            } => {
                if let Ok(region) = Region::parse(&region)
                    && let Err(e) = undo_registration(paths, agent, &region, &instance_id).await
                {
                    problems.push(e);
                }
            }
            // Kernel settings, swap and firewall rules stay (nodeadm never reverts them); a
            // package the run installed is removed below.
            Note::Host { .. } => {}
        }
    }
    if let Err(e) = host::remove_installed_packages(paths, &txn.notes()) {
        problems.push(e.to_string());
    }
    problems.extend(txn.rollback().into_iter().map(|e| e.to_string()));
    if problems.is_empty() {
        Ok(Some(
            "rolled back an interrupted earlier run first".to_owned(),
        ))
    } else {
        Err(PhaseError::Other(format!(
            "an interrupted earlier run could not be rolled back completely: {}",
            problems.join("; ")
        )))
    }
}

/// Deregisters an SSM instance this run (or a killed one) registered. When the credentials on
/// disk are missing or refused (the first refresh failed, or never ran), role credentials are
/// fetched with the instance's own key, which was saved before the service accepted it.
async fn undo_registration(
    paths: &HostPaths,
    agent: &AgentConfig,
    region: &Region,
    instance_id: &str,
) -> Result<(), String> {
    match cloud::deregister(agent, region, instance_id).await {
        Ok(()) => Ok(()),
        Err(CloudError::Credentials { .. } | CloudError::Deregister { auth: true, .. }) => {
            let env = IdentityEnv::new(paths, agent);
            let creds = env
                .instance_credentials(region, instance_id)
                .await
                .map_err(|e| {
                    format!(
                        "instance {instance_id} registered by this run could not be deregistered: no usable credentials ({e}); deregister it by hand (`aws ssm deregister-managed-instance --instance-id {instance_id}`)"
                    )
                })?;
            cloud::deregister_with(agent, region, instance_id, cloud::sdk_credentials(&creds))
                .await
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The join state shared by the phases.
struct Run<'a> {
    paths: &'a HostPaths,
    config: &'a Config,
    opts: &'a JoinOptions,
    txn: Journal,
    compensations: Vec<Compensation>,
    report: JoinReport,
    spec: NodeSpec,
    node_name: Option<String>,
    instance_id: Option<String>,
    eks: Option<aws_sdk_eks::Client>,
    install: Option<crate::install::InstallReport>,
    rendered: Option<(node::Rendered, ClusterDetails, Vec<FileDigest>)>,
    components: Option<Components>,
    records: Vec<record::ComponentRecord>,
    /// Runs host actions on the real root, records them elsewhere.
    host: Box<dyn HostActions>,
    /// DescribeCluster's answer, asked once: `Some(None)` when it could not be asked.
    described: Option<Option<Described>>,
}

/// Runs `join`. See the module docs.
pub async fn join(
    paths: &HostPaths,
    config: &Config,
    opts: &JoinOptions,
) -> Result<JoinReport, JoinFailure> {
    let fail = |phase: Phase, source: PhaseError| JoinFailure {
        phase,
        source,
        rollback_problems: Vec::new(),
    };
    let spec = NodeSpec::from_settings(&config.node);
    let mut report = JoinReport::default();
    if !opts.dry_run {
        match recover(paths, &config.agent).await {
            Ok(Some(line)) => report.lines.push(line),
            Ok(None) => {}
            Err(e) => return Err(fail(Phase::Preflight, e)),
        }
    }
    let digest = config_digest(config, opts, &spec);
    if opts.skip.is_empty()
        && let Some(existing) = noop_check(paths, &digest)
            .await
            .map_err(|e| fail(Phase::Preflight, e))?
    {
        report.noop = true;
        report.node_name = Some(existing.node_name.clone());
        report.lines.push(format!(
            "already joined to {} as {} with this configuration (Kubernetes {}, containerd and kubelet healthy): nothing to do",
            existing.cluster, existing.node_name, existing.kubernetes_version
        ));
        return Ok(report);
    }
    let txn = if opts.dry_run {
        Journal::dry_run(paths.clone())
    } else {
        Journal::new(
            paths.clone(),
            Path::new(BACKUP_DIR).join(run_id()),
            Some(PathBuf::from(TXN_JOURNAL)),
        )
    };
    let mut run = Run {
        paths,
        config,
        opts,
        txn,
        compensations: Vec::new(),
        report,
        spec,
        node_name: None,
        instance_id: None,
        eks: None,
        install: None,
        rendered: None,
        components: None,
        records: Vec::new(),
        host: host::for_root(paths),
        described: None,
    };
    // The state directory belongs to the run when the run creates it.
    if let Err(e) = run.txn.ensure_tree(Path::new(STATE_DIR), 0o700) {
        return Err(fail(Phase::Preflight, e.into()));
    }
    // Each phase's entries carry PHASE in the journal; once identity named the node, every
    // entry of the caller's span carries NODE_NAME (cli/join.rs opens it with the field empty).
    let mut named = false;
    let phase_span = |phase: Phase| tracing::info_span!("phase", phase = phase.as_str());
    for phase in Phase::ALL {
        if opts.skip.contains(&phase) {
            run.report.lines.push(format!("{phase}: skipped"));
            continue;
        }
        // The checks against the cluster need the identity phase's credentials and must pass
        // before install changes the host.
        if phase == Phase::Install
            && !opts.skip.contains(&Phase::Preflight)
            && let Err(source) = run
                .cluster_preflight()
                .instrument(phase_span(Phase::Preflight))
                .await
        {
            let problems = run
                .rollback()
                .instrument(phase_span(Phase::Preflight))
                .await;
            return Err(JoinFailure {
                phase: Phase::Preflight,
                source,
                rollback_problems: problems,
            });
        }
        let result = async {
            match phase {
                Phase::Preflight => run.preflight().await,
                Phase::Identity => run.identity().await,
                Phase::Install => run.install().await,
                Phase::Render => run.render().await,
                Phase::Start => run.start().await,
                Phase::Wait => run.wait().await,
                Phase::Commit => Ok(()),
            }
        }
        .instrument(phase_span(phase))
        .await;
        if !named && let Some(name) = run.node_name.as_deref().filter(|n| !n.contains('<')) {
            tracing::Span::current().record("node_name", name);
            named = true;
        }
        if let Err(source) = result {
            let problems = run.rollback().instrument(phase_span(phase)).await;
            return Err(JoinFailure {
                phase,
                source,
                rollback_problems: problems,
            });
        }
    }
    if let Err(source) = run
        .commit(digest)
        .instrument(phase_span(Phase::Commit))
        .await
    {
        let problems = run.rollback().instrument(phase_span(Phase::Commit)).await;
        return Err(JoinFailure {
            phase: Phase::Commit,
            source,
            rollback_problems: problems,
        });
    }
    if let Some(components) = &run.components {
        let line = start_agent(components).await;
        run.report.lines.push(line);
    }
    run.report.planned = run.txn.planned().to_vec();
    run.report.node_name = run.node_name.clone();
    Ok(run.report)
}

/// After a committed join on a systemd host, the agent's own unit is started (or restarted, to
/// pick up this join): the packages enable hybrid-agent.service but cannot start it before a
/// join. A failure here does not undo the join — the node is joined; the line says what to do.
async fn start_agent(components: &Components) -> String {
    use crate::supervise::AnyBackend;
    use crate::supervise::systemd::AgentUnitOutcome;
    match &components.backend {
        AnyBackend::Systemd(systemd) => match systemd.start_agent_unit(true).await {
            Ok(AgentUnitOutcome::Started) => "agent: hybrid-agent.service started; from now on it refreshes the credentials and keeps containerd and kubelet healthy".to_owned(),
            Ok(AgentUnitOutcome::Restarted) => "agent: hybrid-agent.service restarted to take up this join".to_owned(),
            Ok(AgentUnitOutcome::AlreadyRunning) => "agent: hybrid-agent.service is running".to_owned(),
            Ok(AgentUnitOutcome::NotInstalled) => "agent: no hybrid-agent.service unit on this host (install the .deb or .rpm, or run `hybrid-agent run` under your init system)".to_owned(),
            Err(e) => format!("agent: could not start hybrid-agent.service ({e}); run `systemctl start hybrid-agent`"),
        },
        AnyBackend::Process(_) => "start: they keep running after join exits; `hybrid-agent run` (hybrid-agent.service) adopts and supervises them".to_owned(),
    }
}

/// The existing node record, when joining again would change nothing.
async fn noop_check(paths: &HostPaths, digest: &str) -> Result<Option<NodeRecord>, PhaseError> {
    let Some(existing) = NodeRecord::load(paths)? else {
        return Ok(None);
    };
    if existing.config_digest != digest {
        return Ok(None);
    }
    let Some(tracker) = Tracker::load(paths).map_err(|e| PhaseError::Other(e.to_string()))? else {
        return Ok(None);
    };
    if tracker.kubernetes_version != existing.kubernetes_version || !tracker.intact(paths) {
        return Ok(None);
    }
    let files_ok = existing
        .files
        .iter()
        .all(|f| Sha256::of_file(&paths.resolve(&f.path)).is_ok_and(|s| s == f.sha256));
    if !files_ok {
        return Ok(None);
    }
    let prober = crate::supervise::probe::Prober::new();
    for c in &existing.components {
        if !prober
            .probe(&c.probe.to_probe(), components::WAIT_PROBE_TIMEOUT)
            .await
            .ok
        {
            return Ok(None);
        }
    }
    Ok(Some(existing))
}

impl Run<'_> {
    fn agent(&self) -> &AgentConfig {
        &self.config.agent
    }

    fn region(&self) -> &Region {
        &self.config.node.cluster.region
    }

    async fn preflight(&mut self) -> Result<(), PhaseError> {
        // A swap partition is refused before anything changes; swap files are turned off in
        // the render phase.
        let swap_files = node::check_swap(self.paths, &self.spec)?;
        if let Some(existing) = NodeRecord::load(self.paths)?
            && (existing.cluster != self.spec.cluster || existing.region != self.spec.region)
        {
            return Err(PhaseError::Preflight(format!(
                "this host is joined to cluster {} in {}; run `hybrid-agent leave` before joining {} in {}",
                existing.cluster, existing.region, self.spec.cluster, self.spec.region
            )));
        }
        let socket = self.paths.resolve(node::containerd::CONTAINERD_SOCKET);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(PhaseError::Preflight(format!(
                "containerd's socket would be {} ({} bytes), longer than a unix socket path may be ({MAX_SOCKET_PATH}); use a shorter --root",
                socket.display(),
                socket.as_os_str().len()
            )));
        }
        let swap = if swap_files.is_empty() {
            "no swap to turn off".to_owned()
        } else {
            let files: Vec<&str> = swap_files.iter().map(|a| a.path.as_str()).collect();
            format!("swap files {} to turn off", files.join(", "))
        };
        self.report
            .lines
            .push(format!("preflight: host free to join ({swap})"));
        Ok(())
    }

    /// DescribeCluster, asked once. Required when the NodeConfig lacks endpoint, CA or CIDR
    /// (as nodeadm); otherwise a failure only skips the checks that need it, with a warning.
    async fn described(&mut self) -> Result<Option<Described>, PhaseError> {
        if let Some(d) = &self.described {
            return Ok(d.clone());
        }
        let needed = node::cluster::needs_describe(&self.config.node);
        let asked = match self.eks() {
            Ok(Some(client)) => node::cluster::describe_cluster(&client, &self.spec.cluster)
                .await
                .map(Some)
                .map_err(PhaseError::from),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let d = match asked {
            Ok(d) => d,
            Err(e) if !needed => {
                self.report.warnings.push(format!(
                    "DescribeCluster could not be asked ({e}); the node IP and kubelet version were not checked against the cluster"
                ));
                None
            }
            Err(e) => return Err(e),
        };
        self.described = Some(d.clone());
        Ok(d)
    }

    /// What nodeadm's `init` validates against the cluster before it configures the node:
    /// kubelet not newer than the API server (nor too old), the node IP inside a remote node
    /// network (`internal/node/hybrid/versionskew_validator.go`, `internal/network/utils.go`).
    async fn cluster_preflight(&mut self) -> Result<(), PhaseError> {
        let d = match self.described().await {
            Ok(d) => d,
            // No credentials (identity skipped and never run): the phase that needs the
            // cluster says so.
            Err(PhaseError::Cloud(e)) => {
                tracing::debug!("cluster checks skipped: {e}");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let Some(d) = d else {
            self.txn.plan(
                "check the kubelet version and the node IP against DescribeCluster".to_owned(),
            );
            return Ok(());
        };
        d.check_usable()?;
        let mut checked = Vec::new();
        let kubelet = match &self.opts.kubernetes_version {
            Some(v) => Some(v.clone()),
            None if self.opts.skip.contains(&Phase::Install) => Tracker::load(self.paths)
                .ok()
                .flatten()
                .map(|t| t.kubernetes_version),
            // The cluster's own version is installed.
            None => None,
        };
        if let (Some(k), Some(c)) = (&kubelet, &d.version) {
            node::cluster::check_version_skew(k, c)?;
            checked.push(format!("kubelet {k} fits the cluster's {c}"));
        }
        let flags = &self.spec.kubelet_flags;
        let found = if self.host.is_real() {
            let iam_name = match &self.config.node.provider {
                Provider::IamRolesAnywhere { node_name, .. } => Some(node_name.as_str()),
                Provider::Ssm { .. } => None,
            };
            Some(node::cluster::host_node_ip(
                flags,
                iam_name,
                Path::new(node::cluster::PROC_NET_ROUTE),
            )?)
        } else {
            node::cluster::node_ip_from_flags(flags)?
                .map(|ip| (ip, "--node-ip in spec.kubelet.flags".to_owned()))
        };
        match found {
            Some((ip, origin)) => {
                node::cluster::check_node_ip(ip, &origin, &d)?;
                checked.push(format!("node IP {ip} is in a remote node network"));
            }
            None => checked.push(
                "node IP not checked (--root is not /: only a --node-ip in spec.kubelet.flags is checked there)"
                    .to_owned(),
            ),
        }
        self.report
            .lines
            .push(format!("preflight: {}", checked.join("; ")));
        Ok(())
    }

    /// Carries out (or, off the real root, records) one host action, noted in the journal.
    fn host_action(
        &mut self,
        action: HostAction,
        done: &mut Vec<String>,
    ) -> Result<(), PhaseError> {
        let line = action.describe();
        if self.txn.is_dry_run() {
            self.txn.plan(format!("host: {line}"));
        } else {
            self.host.apply(&action)?;
            let applied = self.host.is_real();
            self.txn.note(Note::Host { action, applied })?;
        }
        done.push(line);
        Ok(())
    }

    /// What nodeadm's system aspects do to the running host (`internal/system/swap.go`,
    /// `sysctl.go`, `ports.go`, `internal/containerd/daemon.go`): swap files off and out of
    /// /etc/fstab (through the journal, so leave puts the lines back), the kernel modules
    /// loaded and the sysctls live, the node's ports open in an enabled firewall.
    fn prepare_host(&mut self) -> Result<(), PhaseError> {
        let mut done = Vec::new();
        for area in node::check_swap(self.paths, &self.spec)? {
            if self.paths.resolve(&area.path).exists() {
                self.host_action(
                    HostAction::SwapOff {
                        file: PathBuf::from(&area.path),
                    },
                    &mut done,
                )?;
            } else {
                self.report.warnings.push(format!(
                    "swap file {} is listed in /proc/swaps but does not exist; not turned off",
                    area.path
                ));
            }
        }
        if !node::kubelet::swap_allowed(&self.spec.kubelet_config) {
            let fstab = self.paths.resolve(node::system::FSTAB);
            if let Ok(text) = std::fs::read_to_string(&fstab)
                && let Some(without) = node::system::fstab_without_swap(&text)
            {
                let mode = std::fs::metadata(&fstab)
                    .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777)
                    .unwrap_or(0o644);
                self.txn
                    .write_file(Path::new(node::system::FSTAB), without.as_bytes(), mode)?;
                done.push("remove the swap lines from /etc/fstab".to_owned());
            }
        }
        let systemd = crate::supervise::auto::systemd_booted(self.paths.root());
        self.host_action(
            HostAction::LoadModules {
                modules: node::system::MODULES
                    .iter()
                    .map(|m| (*m).to_owned())
                    .collect(),
                systemd,
            },
            &mut done,
        )?;
        self.host_action(HostAction::ApplySysctls, &mut done)?;
        if let Some(firewall) = self.host.firewall() {
            self.host_action(HostAction::OpenPorts { firewall }, &mut done)?;
        }
        let how = if self.txn.is_dry_run() {
            "would"
        } else if self.host.is_real() {
            "applied"
        } else {
            "recorded, not applied (--root is not /)"
        };
        self.report
            .lines
            .push(format!("host: {how}: {}", done.join("; ")));
        for note in self.host.take_notes() {
            self.report.lines.push(format!("host: not applied: {note}"));
        }
        Ok(())
    }

    async fn identity(&mut self) -> Result<(), PhaseError> {
        let mut env = IdentityEnv::new(self.paths, &self.config.agent);
        env.agent_config_arg = self
            .config
            .sources
            .agent_config
            .clone()
            .filter(|p| *p != self.paths.agent_config());
        let node = &self.config.node;
        let aws_config =
            crate::identity::setup::provider_aws_config_file(self.paths, &node.provider);
        if self.txn.is_dry_run() {
            let existing = env.store().load_registration().ok().flatten();
            match (&node.provider, existing) {
                (Provider::Ssm { .. }, Some(reg)) if !self.opts.reregister => {
                    self.txn.plan(format!(
                        "reuse the SSM registration {} and refresh its credentials",
                        reg.instance_id
                    ));
                    self.node_name = Some(reg.instance_id);
                }
                (Provider::Ssm { activation_id, .. }, _) => {
                    self.txn.plan(format!(
                        "register with SSM activation {activation_id} in {} (new RSA-2048 key)",
                        self.region()
                    ));
                    self.node_name = Some("mi-<assigned at registration>".to_owned());
                }
                (Provider::IamRolesAnywhere { node_name, .. }, _) => {
                    self.txn.plan(
                        "create an IAM Roles Anywhere session with the node's certificate"
                            .to_owned(),
                    );
                    self.node_name = Some(node_name.clone());
                }
            }
            for t in env.targets(node.enable_credentials_file) {
                self.txn.plan(format!(
                    "write credentials to {} [{}]",
                    t.path.display(),
                    t.profile
                ));
            }
            if let Some(p) = &aws_config {
                self.txn.plan(format!(
                    "write the AWS config file {} (credential_process: hybrid-agent credential-process)",
                    p.display()
                ));
            }
            return Ok(());
        }
        // The identity module writes its own files; record what they were so a rollback can
        // put them back.
        let store_dir = env.store().dir().to_path_buf();
        let reusing = matches!(node.provider, Provider::Ssm { .. })
            && !self.opts.reregister
            && env.store().load_registration().ok().flatten().is_some();
        if reusing {
            // The identity stays the host's: a key rotated during this run (UpdateKeyPair) is
            // the only one the service still accepts, so a rollback must not put the old key
            // (or its registration.json) back. Only what this run adds is restored.
            for file in [PROVIDER_FILE, CREDENTIALS_STATE_FILE] {
                if let Some(h) = host_path(self.paths, &store_dir.join(file)) {
                    self.txn.protect(&h)?;
                }
            }
        } else if let Some(h) = host_path(self.paths, &store_dir) {
            self.txn.protect_tree(&h)?;
        }
        let written = env
            .targets(node.enable_credentials_file)
            .into_iter()
            .map(|t| t.path)
            .chain(aws_config.clone());
        for path in written {
            match host_path(self.paths, &path) {
                Some(h) => self.txn.protect(&h)?,
                None => self.report.warnings.push(format!(
                    "{} is outside --root; a rollback cannot restore it",
                    path.display()
                )),
            }
        }
        let region = self.region().clone();
        let reregister = self.opts.reregister;
        // Noted the moment the service accepted the registration, before anything else can
        // fail: a failure (or a kill) from here on deregisters it.
        let txn = &mut self.txn;
        let compensations = &mut self.compensations;
        let mut on_registered = |reg: &Registration| -> Result<(), String> {
            let region = Region::parse(&reg.region).unwrap_or_else(|_| region.clone());
            txn.note(Note::Registered {
                instance_id: reg.instance_id.clone(),
                region: region.as_str().to_owned(),
            })
            .map_err(|e| e.to_string())?;
            compensations.push(Compensation::Deregister {
                instance_id: reg.instance_id.clone(),
                region,
            });
            Ok(())
        };
        let out = env
            .join(
                &node.provider,
                &region,
                node.enable_credentials_file,
                reregister,
                &mut on_registered,
            )
            .await?;
        let (how, name) = match &out.registration {
            Some(RegisterOutcome::Registered(reg)) => {
                self.instance_id = Some(reg.instance_id.clone());
                ("registered as", reg.instance_id.clone())
            }
            Some(RegisterOutcome::Reused(reg)) => {
                self.instance_id = Some(reg.instance_id.clone());
                ("already registered as", reg.instance_id.clone())
            }
            None => match &node.provider {
                Provider::IamRolesAnywhere { node_name, .. } => {
                    ("IAM Roles Anywhere node", node_name.clone())
                }
                Provider::Ssm { .. } => ("identity", out.identity.clone()),
            },
        };
        let files: Vec<String> = out.files.iter().map(|f| f.display().to_string()).collect();
        let remaining = out
            .expiration
            .duration_since(std::time::SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.report.lines.push(format!(
            "identity: {how} {name} ({}); credentials valid for {remaining} s written to {}",
            out.provider,
            files.join(", ")
        ));
        if let Some(p) = &out.aws_config {
            self.report.lines.push(format!(
                "identity: AWS config {} runs `hybrid-agent credential-process` for kubelet",
                p.display()
            ));
        }
        self.node_name = Some(name);
        Ok(())
    }

    /// The node name when the identity phase was skipped: the existing registration (SSM) or the
    /// configured name (IAM Roles Anywhere).
    fn node_name(&mut self) -> Result<String, PhaseError> {
        if let Some(n) = &self.node_name {
            return Ok(n.clone());
        }
        let name = match &self.config.node.provider {
            Provider::IamRolesAnywhere { node_name, .. } => node_name.clone(),
            Provider::Ssm { .. } => {
                let env = IdentityEnv::new(self.paths, &self.config.agent);
                match env.store().load_registration() {
                    Ok(Some(reg)) => {
                        self.instance_id = Some(reg.instance_id.clone());
                        reg.instance_id
                    }
                    _ if self.txn.is_dry_run() => "mi-<assigned at registration>".to_owned(),
                    _ => {
                        return Err(PhaseError::Other(
                            "this host is not registered yet, so it has no node name; do not skip the identity phase".to_owned(),
                        ));
                    }
                }
            }
        };
        self.node_name = Some(name.clone());
        Ok(name)
    }

    fn eks(&mut self) -> Result<Option<aws_sdk_eks::Client>, PhaseError> {
        if self.eks.is_none() {
            match cloud::eks(self.agent(), self.region()) {
                Ok(c) => self.eks = Some(c),
                Err(e) if self.txn.is_dry_run() => {
                    tracing::debug!("no credentials for DescribeCluster in a dry run: {e}");
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.eks.clone())
    }

    async fn install(&mut self) -> Result<(), PhaseError> {
        let version = match &self.opts.kubernetes_version {
            Some(v) => v.clone(),
            None => match self.described().await? {
                Some(Described {
                    version: Some(v), ..
                }) => v,
                Some(_) => {
                    return Err(PhaseError::Other(format!(
                        "DescribeCluster {} returned no Kubernetes version; pass --kubernetes-version",
                        self.spec.cluster
                    )));
                }
                None if self.txn.is_dry_run() => "<the cluster's version>".to_owned(),
                None => {
                    return Err(PhaseError::Other(
                        "cannot learn the cluster's Kubernetes version (DescribeCluster could not be asked); pass --kubernetes-version".to_owned(),
                    ));
                }
            },
        };
        if version.starts_with('<') {
            self.txn.plan(format!(
                "install the artifacts of {version} from {}",
                self.opts
                    .source
                    .resolve_in(self.agent(), &self.spec.region)
                    .describe_for_user()
            ));
            return Ok(());
        }
        let installer = Installer::new(
            self.paths.clone(),
            &fetch_settings(self.agent(), self.opts.allow_insecure_mirror),
            self.opts.progress.clone(),
        )?;
        let req = InstallRequest {
            kubernetes_version: version,
            arch: manifest::host_arch().to_owned(),
            source: self.opts.source.resolve_in(self.agent(), &self.spec.region),
        };
        let report = match installer.install(&req, &mut self.txn).await {
            Err(InstallError::NoContainerd { version }) => {
                self.install_containerd_package(&version)?;
                if self.txn.is_dry_run() {
                    self.report.lines.push(format!(
                        "install: would install containerd from the distribution, then Kubernetes {version}"
                    ));
                    return Ok(());
                }
                installer.install(&req, &mut self.txn).await?
            }
            other => other?,
        };
        let line = if report.unchanged {
            format!(
                "install: Kubernetes {} already installed and intact",
                report.version
            )
        } else if self.txn.is_dry_run() {
            format!("install: would install Kubernetes {}", report.version)
        } else {
            format!(
                "install: Kubernetes {} ({} files, {} bytes downloaded)",
                report.version,
                report.files.len(),
                report.downloaded_bytes
            )
        };
        self.report.lines.push(line);
        self.install = Some(report);
        Ok(())
    }

    /// containerd is on neither the host nor the manifest: install the distribution's package
    /// as nodeadm does (`internal/containerd/install.go`), noted in the journal so a rollback or
    /// `leave` removes exactly that. Off the real root it is only recorded, and the sandbox
    /// still has no containerd: that is an error naming the fix.
    fn install_containerd_package(&mut self, version: &str) -> Result<(), PhaseError> {
        let Some(manager) = PackageManager::detect(self.paths) else {
            return Err(PhaseError::Other(format!(
                "containerd is not installed, the manifest for Kubernetes {version} has none, and there is no apt-get, dnf or yum under {} to install the distribution's; install containerd and runc, then join again",
                self.paths.root().display()
            )));
        };
        let action = HostAction::InstallPackage {
            manager,
            package: host::CONTAINERD_PACKAGE.to_owned(),
        };
        let mut done = Vec::new();
        self.host_action(action.clone(), &mut done)?;
        if self.host.is_real() || self.txn.is_dry_run() {
            return Ok(());
        }
        Err(PhaseError::Other(format!(
            "containerd is not installed under {root}: on a real host join would {} — recorded, not run, because --root is not /, so the sandbox still has no containerd. Put a containerd at {root}{}, or use a mirror or bundle whose manifest has containerd",
            action.describe(),
            crate::install::tracker::DISTRO_CONTAINERD,
            root = self.paths.root().display(),
        )))
    }

    /// The installed release: from this run's install phase, or the tracker.
    fn installed(&self) -> Result<(String, crate::install::tracker::ContainerdRecord), PhaseError> {
        if let Some(r) = &self.install {
            return Ok((r.version.clone(), r.containerd.clone()));
        }
        match Tracker::load(self.paths).map_err(|e| PhaseError::Other(e.to_string()))? {
            Some(t) => Ok((t.kubernetes_version, t.containerd)),
            None => Err(PhaseError::Other("nothing is installed yet; do not skip the install phase (or run `hybrid-agent install` first)".to_owned())),
        }
    }

    async fn cluster_details(&mut self) -> Result<ClusterDetails, PhaseError> {
        let described = self.described().await?;
        if described.is_none()
            && self.txn.is_dry_run()
            && node::cluster::needs_describe(&self.config.node)
        {
            let c = &self.config.node.cluster;
            return Ok(ClusterDetails {
                api_server_endpoint: c
                    .api_server_endpoint
                    .as_ref()
                    .map(|e| e.expose().to_string())
                    .unwrap_or_else(|| "<from DescribeCluster>".to_owned()),
                ca_pem: c
                    .certificate_authority
                    .clone()
                    .unwrap_or_else(|| b"<CA bundle from DescribeCluster>\n".to_vec()),
                service_cidr: c.cidr.clone(),
            });
        }
        Ok(node::cluster::details(
            &self.config.node,
            described.as_ref(),
        )?)
    }

    async fn render(&mut self) -> Result<(), PhaseError> {
        let node_name = self.node_name()?;
        let (version, containerd) = match self.installed() {
            Ok(v) => v,
            Err(_) if self.txn.is_dry_run() => {
                let v = self
                    .opts
                    .kubernetes_version
                    .clone()
                    .unwrap_or_else(|| "1.31.0".to_owned());
                (
                    if v.matches('.').count() == 1 {
                        format!("{v}.0")
                    } else {
                        v
                    },
                    crate::install::tracker::ContainerdRecord::Distro {
                        path: crate::install::tracker::DISTRO_CONTAINERD.into(),
                        package: None,
                    },
                )
            }
            Err(e) => return Err(e),
        };
        let details = self.cluster_details().await?;
        let systemd = systemd_cgroups(self.paths, self.agent());
        let aws_config_file = crate::identity::setup::provider_aws_config_file(
            self.paths,
            &self.config.node.provider,
        );
        // The manifest's ECR account and DNS suffix for this region (the install phase's, else
        // the tracker's); absent, the renderers use nodeadm's table.
        let region_configs = match &self.install {
            Some(r) => r.region_config.clone(),
            None => Tracker::load(self.paths)
                .ok()
                .flatten()
                .map(|t| t.region_config)
                .unwrap_or_default(),
        };
        if let Some(rc) = region_configs.get(&self.spec.region) {
            self.spec.region_config = Some(rc.clone());
        }
        let host = node::HostFacts::read(self.paths);
        let input = RenderInput {
            node: &self.spec,
            node_name: &node_name,
            cluster: &details,
            kubernetes_version: &version,
            paths: self.paths,
            credentials_file: &self.config.agent.credentials.file,
            credentials_profile: &self.config.agent.credentials.profile,
            aws_config_file: aws_config_file.as_deref(),
            systemd_cgroups: systemd,
            host: &host,
            network: &self.config.agent.network,
        };
        let rendered = node::render(&input)?;
        let applied = node::apply(&rendered, &mut self.txn)?;
        let changed = applied
            .iter()
            .filter(|a| a.written != crate::node::land::Written::Unchanged)
            .count();
        let verb = if self.txn.is_dry_run() {
            "to write"
        } else {
            "written"
        };
        self.report.lines.push(format!(
            "render: {} files for node {node_name} ({changed} {verb}, {} unchanged)",
            applied.len(),
            applied.len() - changed
        ));
        // The files are in place: make them live before anything starts.
        self.prepare_host()?;
        let digests = FileDigest::of_rendered(&rendered);
        self.records = components::records(self.paths, &rendered, &containerd);
        self.rendered = Some((rendered, details, digests));
        Ok(())
    }

    async fn start(&mut self) -> Result<(), PhaseError> {
        if self.records.is_empty() {
            return Err(PhaseError::Other(
                "there is nothing to start without the render phase; do not skip it".to_owned(),
            ));
        }
        // The daemon supervises from the same plan after join.
        if let Some(plan) = components::plan(&self.records) {
            let mut bytes = serde_json::to_vec_pretty(&plan).unwrap_or_default();
            bytes.push(b'\n');
            self.txn
                .write_file(&components::plan_path(), &bytes, 0o600)?;
            if !crate::supervise::auto::systemd_booted(self.paths.root())
                || self.agent().supervisor.backend == crate::config::SupervisorBackend::Process
            {
                // Pid files and child logs of the built-in backend.
                self.txn.ensure_tree(
                    &Path::new(STATE_DIR).join(crate::supervise::process::SUPERVISE_DIR),
                    0o700,
                )?;
            } else {
                for p in components::unit_paths(&plan) {
                    self.txn.protect(&p)?;
                }
            }
        }
        if self.txn.is_dry_run() {
            for r in &self.records {
                if r.name == ComponentName::Kubelet {
                    self.txn.plan(
                        "pull the pod sandbox image containerd is configured with (`containerd config dump`) through CRI, with an ECR authorization token from the node's credentials".to_owned(),
                    );
                }
                let mut line = format!("start {}: {}", r.name, r.program.display());
                for a in &r.args {
                    line.push(' ');
                    line.push_str(a);
                }
                self.txn.plan(line);
            }
            return Ok(());
        }
        let components =
            Components::connect(self.paths, &self.agent().supervisor.backend, &self.records)
                .await?;
        components.prepare().await?;
        let wait = self.opts.wait_timeout;
        let mut pulled = None;
        for name in [ComponentName::Containerd, ComponentName::Kubelet] {
            let program = self
                .records
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.program.clone())
                .unwrap_or_default();
            self.txn.note(Note::Started {
                component: name.as_str().to_owned(),
                program,
            })?;
            if let Err(e) = components.start(name).await {
                self.compensations
                    .push(Compensation::Stop(Box::new(components)));
                return Err(e.into());
            }
            if name == ComponentName::Containerd {
                if let Err(detail) = components.wait_healthy(name, wait).await {
                    self.compensations
                        .push(Compensation::Stop(Box::new(components)));
                    return Err(PhaseError::Unhealthy {
                        component: name,
                        waited: wait,
                        detail,
                    });
                }
                match self.pull_sandbox_image().await {
                    Ok(line) => pulled = Some(line),
                    Err(e) => {
                        self.compensations
                            .push(Compensation::Stop(Box::new(components)));
                        return Err(e);
                    }
                }
            }
        }
        self.report.lines.push(format!(
            "start: containerd and kubelet started ({})",
            components.selection.reason
        ));
        self.report.lines.extend(pulled);
        self.components = Some(components);
        Ok(())
    }

    /// Pulls the pod sandbox image containerd is configured with, through its CRI socket, with
    /// an ECR token from the node's credentials (nodeadm's containerd PostLaunch step).
    async fn pull_sandbox_image(&mut self) -> Result<String, PhaseError> {
        let program = self
            .records
            .iter()
            .find(|r| r.name == ComponentName::Containerd)
            .map(|r| r.program.clone())
            .unwrap_or_default();
        let config = self.paths.resolve(crate::paths::CONTAINERD_CONFIG);
        let socket = self.paths.resolve(node::containerd::CONTAINERD_SOCKET);
        let image = sandbox::configured_image(&program, &config).await?;
        let token = sandbox::ecr_token(self.agent(), self.region()).await?;
        let reference = sandbox::pull(&socket, &image, &token).await?;
        Ok(format!(
            "start: pod sandbox image {image} pulled with ECR credentials ({reference})"
        ))
    }

    async fn wait(&mut self) -> Result<(), PhaseError> {
        if self.txn.is_dry_run() {
            if let Some(k) = self
                .records
                .iter()
                .find(|r| r.name == ComponentName::Kubelet)
                && let record::ProbeRecord::HttpGet { url } = &k.probe
            {
                self.txn.plan(format!(
                    "wait up to {:?} for kubelet to answer {url}, then for the node to be Ready in the cluster (when its API server answers)",
                    self.opts.wait_timeout
                ));
            }
            return Ok(());
        }
        let Some(components) = &self.components else {
            self.report
                .lines
                .push("wait: skipped (nothing was started)".to_owned());
            return Ok(());
        };
        let wait = self.opts.wait_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        match components.wait_healthy(ComponentName::Kubelet, wait).await {
            Ok(_) => {}
            Err(detail) => {
                return Err(PhaseError::Unhealthy {
                    component: ComponentName::Kubelet,
                    waited: wait,
                    detail,
                });
            }
        }
        let Some((_, details, _)) = self.rendered.clone() else {
            self.report.lines.push("wait: kubelet healthy".to_owned());
            self.report
                .warnings
                .push("node Ready not checked: no cluster details were rendered".to_owned());
            return Ok(());
        };
        let node_name = self.node_name()?;
        let credentials = match cloud::credentials(&self.config.agent) {
            Ok(c) => c,
            Err(e) => {
                self.report.lines.push("wait: kubelet healthy".to_owned());
                self.report
                    .warnings
                    .push(format!("node Ready not checked: {e}"));
                return Ok(());
            }
        };
        let check = ready::ReadyCheck {
            endpoint: &details.api_server_endpoint,
            ca_pem: &details.ca_pem,
            node_name: &node_name,
            cluster: &self.spec.cluster,
            region: self.spec.region.as_str(),
            credentials: &credentials,
            network: &self.config.agent.network,
        };
        match ready::wait_ready(&check, deadline).await? {
            ready::ReadyOutcome::Ready => self
                .report
                .lines
                .push(format!("wait: kubelet healthy; node {node_name} is Ready")),
            ready::ReadyOutcome::WaitingForNetwork(condition) => {
                self.report.lines.push(format!(
                    "wait: kubelet healthy; node {node_name} registered, waiting for a pod network"
                ));
                self.report.warnings.push(format!(
                    "node {node_name} is registered but NotReady until a CNI runs on it ({condition}); deploy Cilium or Calico on the cluster for the remote pod network (EKS hybrid nodes need one of them)"
                ));
            }
            ready::ReadyOutcome::Unreachable(why) => {
                self.report.lines.push("wait: kubelet healthy".to_owned());
                self.report
                    .warnings
                    .push(format!("node Ready not checked: {why}"));
            }
        }
        Ok(())
    }

    async fn commit(&mut self, digest: String) -> Result<(), PhaseError> {
        let Some((_, details, files)) = self.rendered.clone() else {
            // Partial joins (phases skipped) keep their changes but write no node record.
            return self.finish_journal();
        };
        let version = match self.installed() {
            Ok((v, _)) => v,
            Err(_) if self.txn.is_dry_run() => "<the cluster's version>".to_owned(),
            Err(e) => return Err(e),
        };
        let record = NodeRecord {
            format: record::FORMAT,
            node_name: self.node_name()?,
            cluster: self.spec.cluster.clone(),
            region: self.spec.region.clone(),
            provider: self.spec.provider.clone(),
            instance_id: self.instance_id.clone(),
            kubernetes_version: version,
            backend: match &self.components {
                Some(c) => format!("{:?}", c.selection.kind).to_lowercase(),
                None => "none".to_owned(),
            },
            components: self.records.clone(),
            config_digest: if self.opts.skip.is_empty() {
                digest
            } else {
                String::new()
            },
            files,
            spec: self.spec.clone(),
            cluster_details: details,
            systemd_cgroups: systemd_cgroups(self.paths, self.agent()),
            joined_at: crate::install::now_rfc3339(),
        };
        self.txn
            .write_file(Path::new(record::NODE_RECORD), &record.to_bytes(), 0o600)?;
        self.finish_journal()
    }

    /// The run succeeded: its journal becomes (part of) the join record `leave` unwinds.
    fn finish_journal(&mut self) -> Result<(), PhaseError> {
        if self.txn.is_dry_run() {
            return Ok(());
        }
        let txn = std::mem::replace(&mut self.txn, Journal::dry_run(self.paths.clone()));
        match Journal::load(self.paths.clone(), Path::new(JOIN_JOURNAL))? {
            Some(mut previous) => {
                previous.absorb(txn.detach()?)?;
            }
            None => {
                let mut txn = txn;
                txn.persist_as(Path::new(JOIN_JOURNAL))?;
            }
        }
        self.compensations.clear();
        Ok(())
    }

    async fn rollback(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Running components first (they use the files), then what was done elsewhere, newest
        // first, then the files.
        if let Some(components) = self.components.take() {
            self.compensations
                .push(Compensation::Stop(Box::new(components)));
        }
        while let Some(c) = self.compensations.pop() {
            match c {
                Compensation::Stop(components) => {
                    for name in [ComponentName::Kubelet, ComponentName::Containerd] {
                        if let Err(e) = components.stop(name).await {
                            problems.push(format!("stop {name}: {e}"));
                        }
                    }
                }
                Compensation::Deregister {
                    instance_id,
                    region,
                } => {
                    if let Err(e) =
                        undo_registration(self.paths, &self.config.agent, &region, &instance_id)
                            .await
                    {
                        problems.push(e);
                    }
                }
            }
        }
        if let Err(e) = host::remove_installed_packages(self.paths, &self.txn.notes()) {
            problems.push(e.to_string());
        }
        problems.extend(self.txn.rollback().into_iter().map(|e| e.to_string()));
        problems
    }
}

impl Source {
    fn describe_for_user(&self) -> String {
        match self {
            Source::Mirror { manifest_url } => crate::install::download::shown_url(manifest_url),
            Source::Bundle(p) => format!("bundle {}", p.display()),
        }
    }
}
