//! The supervision plan: what to run for containerd and kubelet, written once by `join` (from the
//! node renderer's command lines) and read by every `hybrid-agent run`.
//!
//! Persisting it keeps the daemon independent of the NodeConfig and the cluster lookup: after a
//! reboot the agent supervises exactly what `join` configured, even offline. [`build`] turns a plan
//! into a connected backend plus the supervisor configuration, choosing the backend as configured.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::auto::{self, AnyBackend, BackendChoice, Selection};
use super::process::ProcessSettings;
use super::systemd::{
    DEFAULT_CALL_TIMEOUT, DEFAULT_START_TIMEOUT, SystemdSettings, system_bus_address,
};
use super::units::{self, DEFAULT_RESTART_SEC, SYSTEM_UNIT_DIR, UnitFile};
use super::{
    ComponentName, ComponentSpec, ExecSpec, Probe, ProbePolicy, SuperviseError, SupervisorConfig,
};

/// File under the agent state dir.
pub const PLAN_FILE: &str = "supervision.json";

/// containerd's binary from the distro package.
pub const CONTAINERD_BINARY: &str = "/usr/bin/containerd";

/// One component of the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedComponent {
    pub program: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionPlan {
    pub containerd: PlannedComponent,
    /// containerd's gRPC socket (resolved under `--root`), for its Version probe.
    pub containerd_socket: PathBuf,
    /// containerd's config file when it is not containerd's default path (goes into the drop-in).
    #[serde(default)]
    pub containerd_config: Option<PathBuf>,
    /// kubelet (or, in tests and the demo, the stand-in).
    pub kubelet: PlannedComponent,
    /// kubelet's `/healthz` URL.
    pub kubelet_healthz_url: String,
    /// `/etc/eks/kubelet/environment` (resolved) when join rendered it: kubelet.service then
    /// takes its arguments from there (`$NODEADM_KUBELET_ARGS`), as nodeadm's does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet_environment_file: Option<PathBuf>,
}

impl SupervisionPlan {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(PLAN_FILE)
    }

    /// `None` when `join` has not written a plan yet.
    pub fn read(state_dir: &Path) -> Result<Option<SupervisionPlan>, SuperviseError> {
        let path = Self::path(state_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SuperviseError::Io {
                    op: "read supervision plan",
                    path,
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| SuperviseError::Io {
                op: "parse supervision plan (rerun `hybrid-agent join` to rewrite it)",
                path,
                source: e.into(),
            })
    }

    /// Writes the plan atomically; returns whether its content changed.
    pub fn write(&self, state_dir: &Path) -> Result<bool, SuperviseError> {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        super::systemd::write_if_changed(&Self::path(state_dir), text.as_bytes())
    }

    /// The supervised components, containerd first, with the default probe policy.
    pub fn components(&self) -> Vec<ComponentSpec> {
        let exec = |c: &PlannedComponent| ExecSpec {
            program: c.program.clone(),
            args: c.args.clone(),
            env: c.env.clone(),
        };
        vec![
            ComponentSpec {
                name: ComponentName::Containerd,
                exec: exec(&self.containerd),
                unit: ComponentName::Containerd.unit_name().into(),
                probe: Probe::ContainerdVersion {
                    socket: self.containerd_socket.clone(),
                },
                probe_policy: ProbePolicy::default(),
            },
            ComponentSpec {
                name: ComponentName::Kubelet,
                exec: exec(&self.kubelet),
                unit: ComponentName::Kubelet.unit_name().into(),
                probe: Probe::HttpGet {
                    url: self.kubelet_healthz_url.clone(),
                },
                probe_policy: ProbePolicy::default(),
            },
        ]
    }

    /// The unit files the systemd backend keeps in place.
    pub fn systemd_units(&self) -> Vec<UnitFile> {
        let kubelet = ExecSpec {
            program: self.kubelet.program.clone(),
            args: self.kubelet.args.clone(),
            env: self.kubelet.env.clone(),
        };
        vec![
            units::kubelet_unit(
                &kubelet,
                self.kubelet_environment_file.as_deref(),
                DEFAULT_RESTART_SEC,
            ),
            units::containerd_dropin(
                &self.containerd.program,
                self.containerd_config.as_deref(),
                DEFAULT_RESTART_SEC,
            ),
        ]
    }
}

/// Connects the configured backend for the host under `root` and returns it with the supervisor
/// configuration for `plan`.
pub async fn build(
    choice: BackendChoice,
    root: &Path,
    state_dir: &Path,
    plan: &SupervisionPlan,
    child_output: Option<crate::output::ChildLineSender>,
) -> Result<(AnyBackend, Selection, SupervisorConfig), SuperviseError> {
    let systemd = SystemdSettings {
        bus_address: system_bus_address(root),
        unit_dir: root.join(SYSTEM_UNIT_DIR),
        units: plan.systemd_units(),
        enable: vec![
            ComponentName::Containerd.unit_name().into(),
            ComponentName::Kubelet.unit_name().into(),
        ],
        call_timeout: DEFAULT_CALL_TIMEOUT,
        start_timeout: DEFAULT_START_TIMEOUT,
    };
    let mut process = ProcessSettings::new(state_dir);
    process.child_output = child_output;
    let (backend, selection) = auto::select(choice, root, systemd, process).await?;
    Ok((backend, selection, SupervisorConfig::new(plan.components())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SupervisionPlan {
        SupervisionPlan {
            containerd: PlannedComponent {
                program: CONTAINERD_BINARY.into(),
                args: vec!["--config".into(), "/etc/containerd/config.toml".into()],
                env: vec![],
            },
            containerd_socket: "/run/containerd/containerd.sock".into(),
            containerd_config: None,
            kubelet: PlannedComponent {
                program: units::KUBELET_BINARY.into(),
                args: vec!["--config=/etc/kubernetes/kubelet/config.json".into()],
                env: vec![],
            },
            kubelet_healthz_url: super::super::probe::KUBELET_HEALTHZ_URL.into(),
            kubelet_environment_file: None,
        }
    }

    #[test]
    fn plan_round_trips_and_orders_containerd_first() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        assert!(matches!(SupervisionPlan::read(dir.path()), Ok(None)));
        let p = plan();
        assert!(matches!(p.write(dir.path()), Ok(true)));
        assert!(
            matches!(p.write(dir.path()), Ok(false)),
            "unchanged plan rewritten"
        );
        assert_eq!(
            SupervisionPlan::read(dir.path()).ok().flatten(),
            Some(p.clone())
        );
        let names: Vec<_> = p.components().iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            vec![ComponentName::Containerd, ComponentName::Kubelet]
        );
        assert_eq!(p.systemd_units().len(), 2);
    }
}
