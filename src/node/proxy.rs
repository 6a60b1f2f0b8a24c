//! containerd and kubelet behind an egress proxy: the `[network]` settings of the agent config
//! handed to both, so image pulls (containerd), the ECR credential provider and
//! aws-iam-authenticator (kubelet's children, which inherit its environment) go through the
//! proxy, and trust the extra CA bundle.
//!
//! Under systemd the variables live in drop-ins at the paths nodeadm's `debug` proxy check reads
//! (nodeadm internal/network/proxy_validator.go: `kubelet.service.d/http-proxy.conf` under
//! /etc/systemd/system, containerd's under /usr/lib/systemd/system), each line
//! `Environment="HTTP_PROXY=…"`, so `nodeadm debug` passes on an agent-joined node. The built-in
//! process backend gets the same variables in the children's environment.
//!
//! The CA bundle: containerd pulls with Go's TLS stack, which on Linux reads `SSL_CERT_FILE` in
//! place of the distribution's bundle file but still loads every certificate in the default
//! certificate directories (/etc/ssl/certs, /etc/pki/tls/certs; Go crypto/x509 root_unix.go), so
//! pointing `SSL_CERT_FILE` at the extra bundle adds it without dropping the system roots, for
//! every registry (a `hosts.toml` `ca` would need one directory per registry host) and for
//! kubelet's Go children too.

use std::path::PathBuf;

use super::{RenderInput, RenderedFile};
use crate::config::NetworkConfig;

/// kubelet's proxy drop-in (nodeadm internal/network/proxy_validator.go
/// `validateKubeletProxyConfig`).
pub const KUBELET_PROXY_DROPIN: &str = "/etc/systemd/system/kubelet.service.d/http-proxy.conf";
/// containerd's proxy drop-in (nodeadm internal/network/proxy_validator.go
/// `validateContainerdProxyConfig`; it looks under /usr/lib, not /etc).
pub const CONTAINERD_PROXY_DROPIN: &str =
    "/usr/lib/systemd/system/containerd.service.d/http-proxy.conf";
/// Drop-ins naming the extra CA bundle (ours).
pub const KUBELET_CA_DROPIN: &str = "/etc/systemd/system/kubelet.service.d/ca-bundle.conf";
pub const CONTAINERD_CA_DROPIN: &str = "/etc/systemd/system/containerd.service.d/ca-bundle.conf";
/// Always reached directly: the node itself (AWS's hybrid nodes proxy guide lists `localhost`;
/// kubelet's own probes bypass proxies regardless).
pub const NO_PROXY_ALWAYS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];
/// Go's crypto/x509 override of the CA bundle file (root_unix.go `certFileEnv`).
pub const SSL_CERT_FILE: &str = "SSL_CERT_FILE";

/// The proxy variables for containerd and kubelet (empty without a proxy): `HTTP_PROXY`,
/// `HTTPS_PROXY`, `NO_PROXY` with the node's own addresses, the cluster's service network
/// (in-cluster addresses are never behind the egress proxy) and the configured `no_proxy`.
pub fn proxy_env(network: &NetworkConfig, service_cidr: Option<&str>) -> Vec<(String, String)> {
    let Some(proxy) = &network.proxy else {
        return Vec::new();
    };
    let url = proxy.expose().as_str().trim_end_matches('/').to_owned();
    let mut no_proxy: Vec<String> = NO_PROXY_ALWAYS.iter().map(|s| (*s).to_owned()).collect();
    no_proxy.extend(service_cidr.map(str::to_owned));
    for n in &network.no_proxy {
        if !no_proxy.contains(n) {
            no_proxy.push(n.clone());
        }
    }
    vec![
        ("HTTP_PROXY".to_owned(), url.clone()),
        ("HTTPS_PROXY".to_owned(), url),
        ("NO_PROXY".to_owned(), no_proxy.join(",")),
    ]
}

/// `SSL_CERT_FILE` for the extra CA bundle, when one is configured (already resolved under
/// `--root`).
pub fn ca_env(network: &NetworkConfig) -> Vec<(String, String)> {
    network
        .ca_bundle
        .iter()
        .map(|p| (SSL_CERT_FILE.to_owned(), p.display().to_string()))
        .collect()
}

/// Everything containerd and kubelet get from `[network]`.
pub fn env(input: &RenderInput<'_>) -> Vec<(String, String)> {
    let mut env = proxy_env(input.network, input.cluster.service_cidr.as_deref());
    env.extend(ca_env(input.network));
    env
}

/// A `[Service]` drop-in setting `vars`, one quoted `Environment=` line each (the form nodeadm's
/// check searches for `HTTP_PROXY=<url>` in).
fn dropin(vars: &[(String, String)], why: &str) -> Vec<u8> {
    let mut s =
        format!("# Written by hybrid-agent from {why}; rewritten on every join.\n[Service]\n");
    for (k, v) in vars {
        // systemd.exec(5): `%` starts a specifier; quotes and backslashes are C-style escaped.
        let line = format!("{k}={v}")
            .replace('%', "%%")
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        s.push_str(&format!("Environment=\"{line}\"\n"));
    }
    s.into_bytes()
}

/// The drop-ins for both services (none without `[network] proxy` or `ca_bundle`).
pub fn render(input: &RenderInput<'_>) -> Vec<RenderedFile> {
    let mut files = Vec::new();
    let proxy = proxy_env(input.network, input.cluster.service_cidr.as_deref());
    if !proxy.is_empty() {
        // A proxy URL with a password is a secret: root-readable only.
        let secret = input
            .network
            .proxy
            .as_ref()
            .is_some_and(|p| p.expose().password().is_some());
        for path in [KUBELET_PROXY_DROPIN, CONTAINERD_PROXY_DROPIN] {
            files.push(RenderedFile::new(
                PathBuf::from(path),
                dropin(&proxy, "[network] proxy of the agent config"),
                if secret { 0o600 } else { 0o644 },
                "proxy settings (systemd drop-in)",
            ));
        }
    }
    let ca = ca_env(input.network);
    if !ca.is_empty() {
        for path in [KUBELET_CA_DROPIN, CONTAINERD_CA_DROPIN] {
            files.push(RenderedFile::new(
                PathBuf::from(path),
                dropin(&ca, "[network] ca_bundle of the agent config"),
                0o644,
                "extra CA bundle (systemd drop-in)",
            ));
        }
    }
    files
}
