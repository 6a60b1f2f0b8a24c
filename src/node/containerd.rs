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
/// The pause image tag EKS uses (nodeadm's sandbox image).
pub const PAUSE_TAG: &str = super::ecr::PAUSE_TAG;

/// The pause (sandbox) image for a region, by nodeadm's fallback table alone (no manifest
/// `region_config`); [`super::ecr::sandbox_image`] is the full rule. `dns_suffix` is used when
/// the table has no better one.
pub fn sandbox_image(region: &str, dns_suffix: &str) -> String {
    let rc = super::ecr::RegionConfig {
        dns_suffix: dns_suffix.to_owned(),
        ..Default::default()
    };
    super::ecr::sandbox_image(region, Some(&rc)).to_string()
}

/// The sandbox image for the node being rendered (manifest `region_config`, else nodeadm's
/// table).
pub fn sandbox_image_ref(input: &RenderInput<'_>) -> super::ecr::ImageRef {
    super::ecr::sandbox_image(&input.node.region, input.node.region_config.as_ref())
}

/// `config.toml`, the user drop-in and the base runtime spec.
pub fn render(input: &RenderInput<'_>) -> Vec<RenderedFile> {
    let p = |host: &str| input.host(host);
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
        sandbox = toml_str(&sandbox_image_ref(input).to_string()),
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
    fn sandbox_image_by_the_fallback_table() {
        assert_eq!(
            sandbox_image("us-west-2", "amazonaws.com"),
            "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/pause:3.5"
        );
        assert_eq!(
            sandbox_image("cn-north-1", "amazonaws.com.cn"),
            "918309763551.dkr.ecr.cn-north-1.amazonaws.com.cn/eks/pause:3.5"
        );
        assert_eq!(
            sandbox_image("us-gov-east-1", "amazonaws.com"),
            "151742754352.dkr.ecr.us-gov-east-1.amazonaws.com/eks/pause:3.5"
        );
    }
}
