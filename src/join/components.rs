//! containerd and kubelet as `join`, `upgrade` and `leave` drive them: the command lines from the
//! rendered configuration, the supervisor backend (systemd units or the built-in process
//! backend, chosen as the daemon chooses), and bounded waits on the same health probes the
//! supervisor uses — containerd's Version RPC on its socket, kubelet's `/healthz`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::SupervisorBackend;
use crate::install::manifest;
use crate::install::tracker::ContainerdRecord;
use crate::node::Rendered;
use crate::paths::HostPaths;
use crate::supervise::plan::{PlannedComponent, SupervisionPlan};
use crate::supervise::process::ProcessSettings;
use crate::supervise::systemd::{self, SystemdSettings};
use crate::supervise::{
    AnyBackend, Backend, BackendChoice, ComponentName, ComponentSpec, ProbePolicy, Selection,
    StartOutcome, SuperviseError,
};

use super::record::{ComponentRecord, ProbeRecord};

/// Pause between health probes while waiting for a component.
pub const WAIT_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Each probe's own timeout while waiting.
pub const WAIT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The component records for the rendered configuration: containerd (the distribution's or
/// ours, with our config file) and kubelet (the installed binary with the rendered flags).
pub fn records(
    paths: &HostPaths,
    rendered: &Rendered,
    containerd: &ContainerdRecord,
) -> Vec<ComponentRecord> {
    vec![
        ComponentRecord {
            name: ComponentName::Containerd,
            program: paths.resolve(containerd.path()),
            args: rendered.containerd_args.clone(),
            env: rendered.containerd_env.clone(),
            probe: ProbeRecord::ContainerdVersion {
                socket: rendered.containerd_socket.clone(),
            },
            environment_file: None,
        },
        ComponentRecord {
            name: ComponentName::Kubelet,
            program: paths.resolve(manifest::kubelet_path()),
            args: rendered.kubelet_args.clone(),
            env: rendered.kubelet_env.clone(),
            probe: ProbeRecord::HttpGet {
                url: rendered.kubelet_healthz_url.clone(),
            },
            environment_file: Some(rendered.kubelet_environment_file.clone()),
        },
    ]
}

/// The supervision plan the daemon (`hybrid-agent run`) reads: the same command lines.
pub fn plan(records: &[ComponentRecord]) -> Option<SupervisionPlan> {
    let c = records
        .iter()
        .find(|r| r.name == ComponentName::Containerd)?;
    let k = records.iter().find(|r| r.name == ComponentName::Kubelet)?;
    let planned = |r: &ComponentRecord| PlannedComponent {
        program: r.program.clone(),
        args: r.args.clone(),
        env: r.env.clone(),
    };
    let socket = match &c.probe {
        ProbeRecord::ContainerdVersion { socket } => socket.clone(),
        ProbeRecord::HttpGet { .. } => PathBuf::from(crate::node::containerd::CONTAINERD_SOCKET),
    };
    let url = match &k.probe {
        ProbeRecord::HttpGet { url } => url.clone(),
        ProbeRecord::ContainerdVersion { .. } => {
            crate::supervise::probe::KUBELET_HEALTHZ_URL.to_owned()
        }
    };
    Some(SupervisionPlan {
        containerd: planned(c),
        containerd_socket: socket,
        containerd_config: c
            .args
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .map(PathBuf::from),
        kubelet: planned(k),
        kubelet_healthz_url: url,
        kubelet_environment_file: k.environment_file.clone(),
    })
}

/// Host paths of the unit files the systemd backend writes for `plan` (for the journal).
pub fn unit_paths(plan: &SupervisionPlan) -> Vec<PathBuf> {
    plan.systemd_units()
        .iter()
        .map(|u| Path::new(crate::paths::SYSTEMD_UNIT_DIR).join(&u.path))
        .collect()
}

/// The plan file (host path).
pub fn plan_path() -> PathBuf {
    Path::new(crate::paths::STATE_DIR).join(crate::supervise::plan::PLAN_FILE)
}

/// The configured backend choice.
pub fn choice(backend: &SupervisorBackend) -> BackendChoice {
    match backend {
        SupervisorBackend::Auto => BackendChoice::Auto,
        SupervisorBackend::Systemd => BackendChoice::Systemd,
        SupervisorBackend::Process => BackendChoice::Process,
    }
}

/// A connected backend with the components' specs.
pub struct Components {
    pub backend: AnyBackend,
    pub selection: Selection,
    pub specs: Vec<ComponentSpec>,
    prober: crate::supervise::probe::Prober,
}

impl Components {
    /// Connects the backend the configuration chooses (systemd only when PID 1 is systemd), as
    /// the daemon does from the same plan.
    pub async fn connect(
        paths: &HostPaths,
        backend: &SupervisorBackend,
        records: &[ComponentRecord],
    ) -> Result<Self, SuperviseError> {
        let specs: Vec<ComponentSpec> = records
            .iter()
            .map(|r| r.spec(ProbePolicy::default()))
            .collect();
        let (backend, selection) = match plan(records) {
            Some(plan) => {
                let (b, s, _) = crate::supervise::plan::build(
                    choice(backend),
                    paths.root(),
                    &paths.state_dir(),
                    &plan,
                    // join's own run: the daemon ships the output from the start of the file.
                    None,
                )
                .await?;
                (b, s)
            }
            // A partial record (one component, when recovering a killed run): no unit files.
            None => {
                let systemd = SystemdSettings {
                    bus_address: systemd::system_bus_address(paths.root()),
                    unit_dir: paths.systemd_unit_dir(),
                    units: Vec::new(),
                    enable: Vec::new(),
                    call_timeout: systemd::DEFAULT_CALL_TIMEOUT,
                    start_timeout: systemd::DEFAULT_START_TIMEOUT,
                };
                crate::supervise::auto::select(
                    choice(backend),
                    paths.root(),
                    systemd,
                    ProcessSettings::new(paths.state_dir()),
                )
                .await?
            }
        };
        Ok(Self {
            backend,
            selection,
            specs,
            prober: crate::supervise::probe::Prober::new(),
        })
    }

    pub fn spec(&self, name: ComponentName) -> Option<&ComponentSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// Writes unit files (systemd) and the like.
    pub async fn prepare(&self) -> Result<(), SuperviseError> {
        self.backend.prepare(&self.specs).await
    }

    /// Starts `name`; one that is already running (a distribution's containerd.service, active
    /// since its package was installed) is restarted, so it runs with the configuration join
    /// just wrote, as nodeadm's `EnsureRunning` restarts containerd and kubelet on every `init`
    /// (`internal/containerd/daemon.go`, `internal/kubelet/daemon.go`). Without it a Debian
    /// host's containerd kept its packaged config: no sandbox image, no registry hosts.
    pub async fn start(&self, name: ComponentName) -> Result<(), SuperviseError> {
        if let Some(spec) = self.spec(name) {
            let outcome = self.backend.start(spec).await?;
            if let StartOutcome::AlreadyActive { pid } = outcome {
                self.backend.restart(spec).await?;
                tracing::info!(component = %name, ?pid, "was already running; restarted to take up the configuration join wrote");
            } else {
                tracing::info!(component = %name, ?outcome, "started");
            }
        }
        Ok(())
    }

    pub async fn stop(&self, name: ComponentName) -> Result<(), SuperviseError> {
        match self.spec(name) {
            Some(spec) => self.backend.stop(spec).await,
            None => Ok(()),
        }
    }

    /// Replaces a component's spec (new command line after an upgrade).
    pub fn set_spec(&mut self, spec: ComponentSpec) {
        self.specs.retain(|s| s.name != spec.name);
        self.specs.push(spec);
    }

    /// Probes `name` until it answers or `timeout` passes; the error carries the last probe's
    /// answer.
    pub async fn wait_healthy(
        &self,
        name: ComponentName,
        timeout: Duration,
    ) -> Result<String, String> {
        let Some(spec) = self.spec(name) else {
            return Err(format!("{name} is not configured"));
        };
        let deadline = Instant::now() + timeout;
        loop {
            let record = self.prober.probe(&spec.probe, WAIT_PROBE_TIMEOUT).await;
            if record.ok {
                return Ok(record.detail);
            }
            if Instant::now() >= deadline {
                return Err(record.detail);
            }
            tokio::time::sleep(WAIT_PROBE_INTERVAL).await;
        }
    }

    /// One probe, now.
    pub async fn healthy_now(&self, name: ComponentName) -> bool {
        match self.spec(name) {
            Some(spec) => self.prober.probe(&spec.probe, WAIT_PROBE_TIMEOUT).await.ok,
            None => false,
        }
    }
}
