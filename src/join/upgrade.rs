//! `upgrade --kubernetes-version X`: move a joined node to another release, and back by itself
//! when the new kubelet does not come up.
//!
//! The new artifacts are downloaded and verified into the staging directory first (nothing
//! changes if that fails), then swapped in with atomic renames through a journal that keeps the
//! old files; the configuration is rendered again for the new version (drop-ins, flags); kubelet
//! is restarted and must answer `/healthz` within the wait timeout. If it does not, kubelet is
//! stopped, the journal restores the previous binaries and configuration, the previous kubelet
//! is started again, and the error says that the upgrade was rolled back.
//!
//! Between the download and the switch the node is drained ([`super::drain`]): cordoned, its
//! pods evicted through the Eviction API (PodDisruptionBudgets hold), as EKS Auto Mode and
//! `kubectl drain` do; where the cluster does not let the node evict, it must have been drained
//! already (nodeadm's rule). Once the new kubelet is healthy — or the old one is back after a
//! rollback — the node is uncordoned, if the cordon was the drain's. A drain that cannot finish
//! in time stops the upgrade before anything changed, with the node uncordoned again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::AgentConfig;
use crate::install::manifest;
use crate::install::progress::Progress;
use crate::install::{InstallRequest, Installer};
use crate::node::land::{Journal, Written};
use crate::node::{self, RenderInput};
use crate::paths::HostPaths;
use crate::supervise::ComponentName;

use super::components::{self, Components};
use super::record::{BACKUP_DIR, FileDigest, JOIN_JOURNAL, NODE_RECORD, NodeRecord, TXN_JOURNAL};
use super::{ArtifactSource, PhaseError, fetch_settings, recover, run_id};

/// What `upgrade` was asked to do.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    pub kubernetes_version: String,
    pub source: ArtifactSource,
    pub allow_insecure_mirror: bool,
    pub wait_timeout: Duration,
    pub progress: Progress,
    /// Drain first (`None`: `--no-drain`, the pods stay while kubelet restarts).
    pub drain: Option<crate::kube::drain::DrainOptions>,
    /// Go on when the node may not drain itself and is not drained.
    pub force: bool,
}

/// What a successful `upgrade` did.
#[derive(Debug, Clone, Default)]
pub struct UpgradeReport {
    pub from: String,
    pub to: String,
    pub unchanged: bool,
    pub lines: Vec<String>,
}

/// Why `upgrade` did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("this host has not joined (no {NODE_RECORD}); run `hybrid-agent join` first")]
    NotJoined,
    #[error(
        "upgrade to Kubernetes {to} did not start: {source}\nNothing changed: the node still runs {from}"
    )]
    NotDrained {
        from: String,
        to: String,
        source: super::drain::DrainFailure,
    },
    /// The upgrade failed and the node's cordon could not be lifted afterwards.
    #[error("{source}; and {note}")]
    StillCordoned {
        source: Box<UpgradeError>,
        note: String,
    },
    #[error(
        "upgrade to Kubernetes {to} failed before anything was switched: {source}. The node still runs {from}"
    )]
    Prepare {
        from: String,
        to: String,
        source: PhaseError,
    },
    #[error("upgrade to Kubernetes {to} failed: {reason}. It was rolled back automatically: the binaries and configuration of {from} are back and kubelet {health}{}", problems_text(.problems))]
    RolledBack {
        from: String,
        to: String,
        reason: String,
        health: String,
        problems: Vec<String>,
    },
}

fn problems_text(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" (but: {})", problems.join("; "))
    }
}

/// Runs `upgrade`. See the module docs.
pub async fn upgrade(
    paths: &HostPaths,
    agent: &AgentConfig,
    opts: &UpgradeOptions,
) -> Result<UpgradeReport, UpgradeError> {
    let mut drained = None;
    let outcome = switch(paths, agent, opts, &mut drained).await;
    // Whatever became of the upgrade, a cordon this upgrade's drain placed is lifted: on the
    // new version when it worked, on the old one when it was rolled back or failed before.
    let Some(record) = drained else {
        return outcome;
    };
    let lifted = super::drain::uncordon(paths, agent, &record).await;
    match (outcome, lifted) {
        (Ok(mut report), Ok(line)) => {
            report.lines.extend(line);
            Ok(report)
        }
        (Ok(mut report), Err(note)) => {
            report.lines.push(format!("warning: {note}"));
            Ok(report)
        }
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(note)) => Err(UpgradeError::StillCordoned {
            source: Box::new(e),
            note,
        }),
    }
}

/// The upgrade itself; `drained` is set once the node was drained (or found drained).
async fn switch(
    paths: &HostPaths,
    agent: &AgentConfig,
    opts: &UpgradeOptions,
    drained: &mut Option<NodeRecord>,
) -> Result<UpgradeReport, UpgradeError> {
    let mut report = UpgradeReport {
        to: opts.kubernetes_version.clone(),
        ..Default::default()
    };
    let prepare = |from: &str, source: PhaseError| UpgradeError::Prepare {
        from: from.to_owned(),
        to: opts.kubernetes_version.clone(),
        source,
    };
    match recover(paths, agent).await {
        Ok(Some(line)) => report.lines.push(line),
        Ok(None) => {}
        Err(e) => return Err(prepare("its current version", e)),
    }
    let record = NodeRecord::load(paths)
        .map_err(|e| prepare("its current version", e.into()))?
        .ok_or(UpgradeError::NotJoined)?;
    report.from = record.kubernetes_version.clone();
    let from = record.kubernetes_version.clone();

    let mut txn = Journal::new(
        paths.clone(),
        Path::new(BACKUP_DIR).join(run_id()),
        Some(PathBuf::from(TXN_JOURNAL)),
    );
    let installer = Installer::new(
        paths.clone(),
        &fetch_settings(agent, opts.allow_insecure_mirror),
        opts.progress.clone(),
    )
    .map_err(|e| prepare(&from, e.into()))?;
    let req = InstallRequest {
        kubernetes_version: opts.kubernetes_version.clone(),
        arch: manifest::host_arch().to_owned(),
        source: opts.source.resolve_in(agent, &record.spec.region),
    };
    // Download and verify everything before the first rename; a failure here changed nothing.
    let resolved = installer
        .resolve(&req)
        .await
        .map_err(|e| prepare(&from, e.into()))?;
    // Drain between the download and the first change, when the version changes at all.
    if resolved.selection.version != from || super::drain::DrainRecord::load(paths).is_some() {
        match (&opts.drain, opts.force) {
            (None, _) => report.lines.push(format!(
                "--no-drain: node {} was not drained; its pods keep running while kubelet restarts",
                record.node_name
            )),
            (Some(drain), force) => {
                let purpose = format!("upgrade to Kubernetes {}", resolved.selection.version);
                match super::drain::drain(paths, agent, &record, drain, &purpose).await {
                    Ok(outcome) => {
                        report.lines.push(outcome.line(&record.node_name));
                        *drained = Some(record.clone());
                    }
                    Err(
                        super::drain::DrainFailure::NoRights { .. }
                        | super::drain::DrainFailure::Check(_),
                    ) if force => {
                        report.lines.push(format!(
                            "--force: node {} may not drain itself and was not checked for pods",
                            record.node_name
                        ));
                    }
                    Err(source) => {
                        return Err(UpgradeError::NotDrained {
                            from,
                            to: resolved.selection.version.clone(),
                            source,
                        });
                    }
                }
            }
        }
    }
    let installed = match installer.install_resolved(&req, &resolved, &mut txn).await {
        Ok(r) => r,
        Err(e) => {
            let problems = txn.rollback();
            let mut err = prepare(&from, e.into());
            if let (UpgradeError::Prepare { source, .. }, false) = (&mut err, problems.is_empty()) {
                *source = PhaseError::Other(format!(
                    "{source}; and the rollback: {}",
                    problems
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            return Err(err);
        }
    };
    report.to = installed.version.clone();
    if installed.unchanged && installed.version == from {
        let _ = txn.discard();
        report.unchanged = true;
        report.lines.push(format!(
            "Kubernetes {from} is already installed: nothing to do"
        ));
        return Ok(report);
    }
    report.lines.push(format!("installed Kubernetes {} ({} files; the old ones are kept until the new kubelet is healthy)", installed.version, installed.files.len()));

    let aws_config_file =
        crate::identity::setup::IdentityEnv::new(paths, agent).recorded_aws_config_file();
    // The new release's manifest may name the region's ECR account (older records lack it).
    let mut spec = record.spec.clone();
    if let Some(rc) = installed.region_config.get(&spec.region) {
        spec.region_config = Some(rc.clone());
    }
    let host = node::HostFacts::read(paths);
    let input = RenderInput {
        node: &spec,
        node_name: &record.node_name,
        cluster: &record.cluster_details,
        kubernetes_version: &installed.version,
        paths,
        credentials_file: &agent.credentials.file,
        credentials_profile: &agent.credentials.profile,
        aws_config_file: aws_config_file.as_deref(),
        systemd_cgroups: record.systemd_cgroups,
        host: &host,
        network: &agent.network,
    };
    let rendered = match node::render(&input)
        .map_err(PhaseError::from)
        .and_then(|r| {
            node::apply(&r, &mut txn)
                .map(|a| (r, a))
                .map_err(PhaseError::from)
        }) {
        Ok(r) => r,
        Err(e) => {
            let _ = txn.rollback();
            return Err(prepare(&from, e));
        }
    };
    let (rendered, applied) = rendered;
    let changed = applied
        .iter()
        .filter(|a| a.written != Written::Unchanged)
        .count();
    report.lines.push(format!(
        "rendered the configuration for {} ({changed} files changed)",
        installed.version
    ));
    let new_records = components::records(paths, &rendered, &installed.containerd);
    let comps = match Components::connect(paths, &agent.supervisor.backend, &new_records).await {
        Ok(c) => c,
        Err(e) => {
            let _ = txn.rollback();
            return Err(prepare(&from, e.into()));
        }
    };
    let containerd_changed = installed.files.iter().any(|f| f.artifact == "containerd");
    // What the switch restarts, in start order: containerd only when its binary changed.
    let restarted: &[ComponentName] = if containerd_changed {
        &[ComponentName::Containerd, ComponentName::Kubelet]
    } else {
        &[ComponentName::Kubelet]
    };

    // The switch: restart on the new binaries and wait for health.
    let switched = async {
        for &name in restarted {
            comps.stop(name).await?;
        }
        for &name in restarted {
            comps.start(name).await?;
            comps
                .wait_healthy(name, opts.wait_timeout)
                .await
                .map_err(|detail| PhaseError::Unhealthy {
                    component: name,
                    waited: opts.wait_timeout,
                    detail,
                })?;
        }
        Ok::<(), PhaseError>(())
    }
    .await;

    if let Err(reason) = switched {
        // Roll back by ourselves: stop the new kubelet, put the old files back, start the old one.
        let mut problems = Vec::new();
        for &name in restarted.iter().rev() {
            if let Err(e) = comps.stop(name).await {
                problems.push(format!("stop {name}: {e}"));
            }
        }
        problems.extend(txn.rollback().into_iter().map(|e| e.to_string()));
        // A fresh backend for the old command lines: the built-in backend's keepers of the new
        // ones are parked after the stop and would not start anything else.
        drop(comps);
        let comps =
            match Components::connect(paths, &agent.supervisor.backend, &record.components).await {
                Ok(c) => c,
                Err(e) => {
                    problems.push(format!("reconnect the supervisor: {e}"));
                    return Err(UpgradeError::RolledBack {
                        from,
                        to: installed.version,
                        reason: reason.to_string(),
                        health: "could not be started again".to_owned(),
                        problems,
                    });
                }
            };
        let mut health = "is healthy again".to_owned();
        for &name in restarted {
            if let Err(e) = comps.start(name).await {
                problems.push(format!("start {name} again: {e}"));
            }
        }
        if let Err(detail) = comps
            .wait_healthy(ComponentName::Kubelet, opts.wait_timeout)
            .await
        {
            health = format!("is NOT healthy yet ({detail})");
        }
        return Err(UpgradeError::RolledBack {
            from,
            to: installed.version,
            reason: reason.to_string(),
            health,
            problems,
        });
    }

    // Healthy: record the new state and keep the changes in the join record, so `leave` still
    // restores the host as it was before join.
    let mut updated = record.clone();
    updated.kubernetes_version = installed.version.clone();
    updated.components = new_records;
    updated.files = FileDigest::of_rendered(&rendered);
    let commit = (move || -> Result<(), PhaseError> {
        txn.write_file(Path::new(NODE_RECORD), &updated.to_bytes(), 0o600)?;
        match Journal::load(paths.clone(), Path::new(JOIN_JOURNAL))? {
            Some(mut join) => join.absorb(txn.detach()?)?,
            None => txn.persist_as(Path::new(JOIN_JOURNAL))?,
        }
        Ok(())
    })();
    if let Err(e) = commit {
        report.lines.push(format!(
            "warning: the upgrade works but its record could not be saved: {e}"
        ));
    }
    report
        .lines
        .push(format!("kubelet {} is healthy", installed.version));
    Ok(report)
}
