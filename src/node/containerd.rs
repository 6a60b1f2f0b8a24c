//! containerd's configuration, as nodeadm writes it for hybrid nodes: config version 2, the CRI
//! plugin with runc as the default runtime and the systemd cgroup driver, CNI binaries in
//! `/opt/cni/bin` and configurations in `/etc/cni/net.d`, the EKS pause image. The user's TOML
//! (`spec.containerd.config`) is not merged into our file but written as a drop-in that
//! `imports` pulls in after it, so our file stays exactly ours and theirs exactly theirs.

use std::path::PathBuf;

use super::{RenderInput, RenderedFile};
use crate::paths;

/// containerd's data directory (containerd default; holds images and snapshots).
pub const CONTAINERD_ROOT: &str = "/var/lib/containerd";
/// containerd's runtime state directory (containerd default).
pub const CONTAINERD_STATE: &str = "/run/containerd";
/// containerd's gRPC socket (containerd default, what kubelet's containerRuntimeEndpoint names).
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// containerd's `opt` plugin directory (containerd default; set explicitly so a `--root`
/// sandbox never writes to the host's /opt).
pub const CONTAINERD_OPT: &str = "/opt/containerd";
/// The drop-in holding `spec.containerd.config`.
pub const USER_DROPIN: &str = "00-nodeconfig.toml";
/// OCI runtime spec runc containers start from, when the NodeConfig gives one (nodeadm's path).
pub const BASE_RUNTIME_SPEC: &str = "/etc/containerd/base-runtime-spec.json";
/// Registry host configuration directories (nodeadm's `config_path`).
pub const REGISTRY_CONFIG_PATH: &str = "/etc/containerd/certs.d:/etc/docker/certs.d";
/// ECR account holding the EKS images in the commercial regions (nodeadm manifest
/// `region_config`); China and GovCloud use other accounts.
pub const ECR_ACCOUNT_COMMERCIAL: &str = "602401143452";
/// ECR accounts per region prefix where they differ (nodeadm manifest `region_config`).
const ECR_ACCOUNTS: [(&str, &str); 3] = [
    ("cn-north-1", "918309763551"),
    ("cn-northwest-1", "961992271922"),
    ("us-gov-", "013241004608"),
];
/// The pause image tag EKS uses (nodeadm's sandbox image).
pub const PAUSE_TAG: &str = "3.5";

/// The pause (sandbox) image for a region.
pub fn sandbox_image(region: &str, dns_suffix: &str) -> String {
    let account = ECR_ACCOUNTS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map(|(_, a)| *a)
        .unwrap_or(ECR_ACCOUNT_COMMERCIAL);
    format!("{account}.dkr.ecr.{region}.{dns_suffix}/eks/pause:{PAUSE_TAG}")
}

/// `config.toml`, the user drop-in and the base runtime spec.
pub fn render(input: &RenderInput<'_>) -> Vec<RenderedFile> {
    let p = |host: &str| input.host(host);
    let region = input.node.region.as_str();
    let mut base_spec_line = String::new();
    let mut files = Vec::new();
    if !input.node.base_runtime_spec.is_empty() {
        base_spec_line = format!("base_runtime_spec = {}\n", toml_str(&p(BASE_RUNTIME_SPEC)));
        let mut json = serde_json::to_vec_pretty(&input.node.base_runtime_spec).unwrap_or_default();
        json.push(b'\n');
        files.push(RenderedFile::new(
            BASE_RUNTIME_SPEC,
            json,
            0o644,
            "containerd base OCI runtime spec",
        ));
    }
    let config = format!(
        "# Written by hybrid-agent (nodeadm-compatible); rewritten on every join.\n\
         # Put your own settings in {dropins}/*.toml: they are imported after this file.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         imports = [{imports}]\n\
         \n\
         [grpc]\n\
         address = {socket}\n\
         \n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n\
         path = {opt}\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\"]\n\
         sandbox_image = {sandbox}\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".registry]\n\
         config_path = {registry}\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         default_runtime_name = \"runc\"\n\
         discard_unpacked_layers = true\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
         runtime_type = \"io.containerd.runc.v2\"\n\
         {base_spec_line}\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
         SystemdCgroup = {systemd_cgroup}\n\
         \n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         bin_dir = {cni_bin}\n\
         conf_dir = {cni_conf}\n",
        dropins = p(paths::CONTAINERD_DROPINS),
        root = toml_str(&p(CONTAINERD_ROOT)),
        state = toml_str(&p(CONTAINERD_STATE)),
        imports = toml_str(&format!("{}/*.toml", p(paths::CONTAINERD_DROPINS))),
        socket = toml_str(&p(CONTAINERD_SOCKET)),
        opt = toml_str(&p(CONTAINERD_OPT)),
        sandbox = toml_str(&sandbox_image(region, &input.node.dns_suffix)),
        registry = toml_str(
            &REGISTRY_CONFIG_PATH
                .split(':')
                .map(p)
                .collect::<Vec<_>>()
                .join(":")
        ),
        cni_bin = toml_str(&p(paths::CNI_BIN_DIR)),
        cni_conf = toml_str(&p(paths::CNI_CONF_DIR)),
        systemd_cgroup = input.systemd_cgroups,
    );
    files.insert(
        0,
        RenderedFile::new(
            paths::CONTAINERD_CONFIG,
            config.into_bytes(),
            0o644,
            "containerd configuration",
        ),
    );
    if let Some(user) = &input.node.containerd_config {
        // An imported file without `version` would be read with version-1 plugin names.
        let has_version = user
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("version"));
        let version_line = if has_version { "" } else { "version = 2\n" };
        let mut text = format!(
            "# From spec.containerd.config of the NodeConfig; written by hybrid-agent.\n{version_line}{user}"
        );
        if !text.ends_with('\n') {
            text.push('\n');
        }
        // Registry credentials may live here: readable by root only.
        files.push(RenderedFile::new(
            PathBuf::from(paths::CONTAINERD_DROPINS).join(USER_DROPIN),
            text.into_bytes(),
            0o600,
            "containerd settings from the NodeConfig",
        ));
    }
    files
}

/// A TOML basic string (JSON string escaping is a subset TOML accepts).
fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// containerd's command line: its config file (re-rooted).
pub fn args(input: &RenderInput<'_>) -> Vec<String> {
    vec!["--config".to_owned(), input.host(paths::CONTAINERD_CONFIG)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_image_per_partition() {
        assert_eq!(
            sandbox_image("us-west-2", "amazonaws.com"),
            "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5"
        );
        assert_eq!(
            sandbox_image("cn-north-1", "amazonaws.com.cn"),
            "918309763551.dkr.ecr.cn-north-1.amazonaws.com.cn/eks/pause:3.5"
        );
        assert_eq!(
            sandbox_image("us-gov-west-1", "amazonaws.com"),
            "013241004608.dkr.ecr.us-gov-west-1.amazonaws.com/eks/pause:3.5"
        );
    }
}
