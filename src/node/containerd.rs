//! containerd's configuration, as nodeadm writes it for hybrid nodes: config version 2, the CRI
//! plugin with runc as the default runtime and the systemd cgroup driver, CNI binaries in
//! `/opt/cni/bin` and configurations in `/etc/cni/net.d`, the EKS pause image.
//!
//! The user's TOML (`spec.containerd.config`) is merged into our file table by table, their
//! values winning, rather than written as a drop-in that `imports` pulls in as nodeadm does
//! (internal/containerd/config.go, `config.d/00-nodeadm.toml`). containerd 1.x merges an
//! imported file per *plugin*: a drop-in that sets one CRI option (a registry mirror,
//! `restrict_oom_score_adj`) replaces the whole CRI section, and with it our sandbox image, CNI
//! directories, cgroup driver and registry `config_path` — checked with Debian's containerd
//! 1.6 (`containerd config dump`), and what tests/pod_sandbox.rs runs into without the merge.

use super::{RenderError, RenderInput, RenderedFile};
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
/// The containerd config version we write (and the only one `spec.containerd.config` may use).
pub const CONFIG_VERSION: i64 = 2;
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

/// `config.toml` (with `spec.containerd.config` merged in) and the base runtime spec.
pub fn render(input: &RenderInput<'_>) -> Result<Vec<RenderedFile>, RenderError> {
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
         # Files in {dropins}/*.toml are imported after this file; containerd 1.x replaces a\n\
         # whole plugin section with an imported one, so put settings for a plugin we configure\n\
         # (the CRI plugin) in the NodeConfig's spec.containerd.config: it is merged in here.\n\
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
    let (config, mode) = match &input.node.containerd_config {
        None => (config, 0o644),
        Some(user) => {
            // Registry credentials may live in the user's settings: readable by root only.
            (merge_user_config(&config, user)?, 0o600)
        }
    };
    files.insert(
        0,
        RenderedFile::new(
            paths::CONTAINERD_CONFIG,
            config.into_bytes(),
            mode,
            "containerd configuration",
        ),
    );
    Ok(files)
}

/// Our config with the user's TOML merged in: tables merge key by key, anything else (values,
/// arrays) is replaced by the user's.
pub fn merge_user_config(ours: &str, user: &str) -> Result<String, RenderError> {
    let problem = |problem: String| RenderError::ContainerdConfig { problem };
    let mut base: toml::Table = ours.parse().map_err(|e| {
        problem(format!(
            "could not be merged: our own config does not parse ({e})"
        ))
    })?;
    let mut theirs: toml::Table = user
        .parse()
        .map_err(|e| problem(format!("is not valid TOML: {e}")))?;
    match theirs.remove("version") {
        None => {}
        Some(toml::Value::Integer(CONFIG_VERSION)) => {}
        Some(other) => {
            return Err(problem(format!("has `version = {other}`")));
        }
    }
    merge_tables(&mut base, theirs);
    let body = toml::to_string(&base)
        .map_err(|e| problem(format!("could not be written back as TOML: {e}")))?;
    let header: String = ours
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(format!(
        "{header}# spec.containerd.config of the NodeConfig is merged into this file.\n{body}"
    ))
}

fn merge_tables(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_tables(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn user_settings_merge_into_the_cri_section_without_replacing_it() {
        let ours = "# ours\nversion = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"a/pause:1\"\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/opt/cni/bin\"\n";
        let user = "[plugins.\"io.containerd.grpc.v1.cri\"]\nrestrict_oom_score_adj = true\n[plugins.\"io.containerd.grpc.v1.cri\".cni]\nconf_dir = \"/x\"\n";
        let merged: toml::Table = merge_user_config(ours, user).unwrap().parse().unwrap();
        let cri = &merged["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["sandbox_image"].as_str(), Some("a/pause:1"));
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(cri["cni"]["bin_dir"].as_str(), Some("/opt/cni/bin"));
        assert_eq!(cri["cni"]["conf_dir"].as_str(), Some("/x"));
        // The user's value wins where both set one.
        let over = merge_user_config(
            ours,
            "[plugins.\"io.containerd.grpc.v1.cri\"]\nsandbox_image = \"b/p:2\"\n",
        )
        .unwrap();
        assert!(
            over.contains("b/p:2") && !over.contains("a/pause:1"),
            "{over}"
        );
        assert!(matches!(
            merge_user_config(ours, "version = 3\n"),
            Err(RenderError::ContainerdConfig { .. })
        ));
        assert!(merge_user_config(ours, "version = 2\n").is_ok());
        assert!(merge_user_config(ours, "[[[").is_err());
    }

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
