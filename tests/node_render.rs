//! Snapshots of every file the node renderers write, for a NodeConfig loaded and validated the
//! way `join` loads it, with `--root /` so the paths are exactly nodeadm's. A change to any
//! rendered byte shows up as a snapshot diff to review (`cargo insta review`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use hybrid_agent::config::{self, AgentConfigSource, Env, LoadContext, NodeInput, NodeSettings};
use hybrid_agent::install::land::{Journal, Written};
use hybrid_agent::node::{self, ClusterDetails, NodeSpec, RenderInput, Rendered};
use hybrid_agent::paths::HostPaths;

const NODE_NAME: &str = "mi-0123456789abcdef0";
/// A real certificate's shape is all the renderer checks; the body is not parsed.
const CA_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUDemo\n-----END CERTIFICATE-----\n";

const SSM_NODECONFIG: &str = r#"
apiVersion: node.eks.aws/v1alpha1
kind: NodeConfig
spec:
  cluster:
    name: prod-cluster
    region: us-west-2
  kubelet:
    config:
      shutdownGracePeriod: 30s
      maxPods: 58
    flags:
      - --node-labels=abc.company.com/test-label=true
  containerd:
    config: |
      [plugins."io.containerd.grpc.v1.cri".containerd]
      discard_unpacked_layers = false
  hybrid:
    ssm:
      activationCode: Fj2KxR7pQ9mW4nVb8TzL3sYe
      activationId: 7c4e5b8a-1f2d-4c3b-9a8e-0123456789ab
"#;

fn load(yaml: &str) -> NodeSpec {
    NodeSpec::from_settings(&load_settings(yaml))
}

fn load_settings(yaml: &str) -> NodeSettings {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nodeconfig.yaml");
    std::fs::write(&file, yaml).unwrap();
    let paths = HostPaths::new(dir.path().join("root"));
    let env = Env::from_iter(Vec::<(String, String)>::new());
    let ctx = LoadContext {
        paths: &paths,
        env: &env,
        agent_config: &AgentConfigSource::Default,
    };
    let input = NodeInput {
        config_source: Some(format!("file://{}", file.display())),
        ..Default::default()
    };
    config::load(ctx, &input).expect("valid NodeConfig").node
}

fn cluster() -> ClusterDetails {
    ClusterDetails {
        api_server_endpoint: "https://ABCDEF0123456789.gr7.us-west-2.eks.amazonaws.com".into(),
        ca_pem: CA_PEM.as_bytes().to_vec(),
        service_cidr: Some("172.20.0.0/16".into()),
    }
}

fn render(
    node: &NodeSpec,
    version: &str,
    paths: &HostPaths,
    credentials: &Path,
    profile: &str,
) -> Rendered {
    let cluster = cluster();
    let input = RenderInput {
        node,
        node_name: NODE_NAME,
        cluster: &cluster,
        kubernetes_version: version,
        paths,
        credentials_file: credentials,
        credentials_profile: profile,
        aws_config_file: None,
        systemd_cgroups: true,
    };
    node::render(&input).expect("render")
}

fn file<'a>(r: &'a Rendered, path: &str) -> &'a str {
    let f = r
        .files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap_or_else(|| panic!("{path} not rendered"));
    std::str::from_utf8(&f.content).unwrap()
}

fn mode(r: &Rendered, path: &str) -> u32 {
    r.files
        .iter()
        .find(|f| f.path == Path::new(path))
        .unwrap()
        .mode
}

#[test]
fn every_file_for_kubernetes_1_31() {
    let node = load(SSM_NODECONFIG);
    let root = HostPaths::default();
    let r = render(
        &node,
        "1.31.2",
        &root,
        Path::new("/root/.aws/credentials"),
        "default",
    );
    let names: Vec<String> = r
        .files
        .iter()
        .map(|f| format!("{} {:04o}", f.path.display(), f.mode))
        .collect();
    insta::assert_snapshot!("files_1_31", names.join("\n"));
    insta::assert_snapshot!(
        "containerd_config_toml",
        file(&r, "/etc/containerd/config.toml")
    );
    insta::assert_snapshot!(
        "containerd_user_dropin",
        file(&r, "/etc/containerd/config.d/00-nodeconfig.toml")
    );
    insta::assert_snapshot!(
        "kubelet_config_json_1_31",
        file(&r, "/etc/kubernetes/kubelet/config.json")
    );
    insta::assert_snapshot!(
        "kubelet_user_dropin",
        file(&r, "/etc/kubernetes/kubelet/config.json.d/40-nodeadm.conf")
    );
    insta::assert_snapshot!("kubeconfig", file(&r, "/var/lib/kubelet/kubeconfig"));
    insta::assert_snapshot!("sysctl", file(&r, "/etc/sysctl.d/99-hybrid-agent.conf"));
    insta::assert_snapshot!(
        "modules_load",
        file(&r, "/etc/modules-load.d/hybrid-agent.conf")
    );
    insta::assert_snapshot!("kubelet_args_1_31", r.kubelet_args.join("\n"));
    assert_eq!(file(&r, "/etc/kubernetes/pki/ca.crt"), CA_PEM);
    assert_eq!(mode(&r, "/var/lib/kubelet/kubeconfig"), 0o600);
    assert_eq!(
        mode(&r, "/etc/containerd/config.d/00-nodeconfig.toml"),
        0o600,
        "may hold registry credentials"
    );
    assert_eq!(r.kubelet_healthz_url, "http://127.0.0.1:10248/healthz");
    assert!(
        r.kubelet_env.is_empty(),
        "the drop-in directory is on by default from 1.30"
    );
    // The user's flag comes last, after ours.
    assert_eq!(
        r.kubelet_args.last().map(String::as_str),
        Some("--node-labels=abc.company.com/test-label=true")
    );
    // Every rendered file parses as what it claims to be.
    toml::from_str::<toml::Table>(file(&r, "/etc/containerd/config.toml"))
        .expect("containerd config is TOML");
    serde_json::from_str::<serde_json::Value>(file(&r, "/etc/kubernetes/kubelet/config.json"))
        .expect("kubelet config is JSON");
    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(file(&r, "/var/lib/kubelet/kubeconfig"))
        .expect("kubeconfig is YAML");
}

#[test]
fn before_1_28_user_kubelet_config_is_merged_and_no_config_dir() {
    let node = load(SSM_NODECONFIG);
    let r = render(
        &node,
        "1.27.9",
        &HostPaths::default(),
        Path::new("/root/.aws/credentials"),
        "default",
    );
    insta::assert_snapshot!(
        "kubelet_config_json_1_27",
        file(&r, "/etc/kubernetes/kubelet/config.json")
    );
    assert!(
        !r.files
            .iter()
            .any(|f| f.path.starts_with("/etc/kubernetes/kubelet/config.json.d"))
    );
    assert!(!r.kubelet_args.iter().any(|a| a.starts_with("--config-dir")));
}

#[test]
fn kubernetes_1_29_needs_the_drop_in_alpha_switch() {
    let node = load(SSM_NODECONFIG);
    let r = render(
        &node,
        "1.29.3",
        &HostPaths::default(),
        Path::new("/root/.aws/credentials"),
        "default",
    );
    assert_eq!(
        r.kubelet_env,
        vec![(
            "KUBELET_CONFIG_DROPIN_DIR_ALPHA".to_owned(),
            "on".to_owned()
        )]
    );
}

#[test]
fn user_healthz_port_and_credentials_file_reach_the_plan() {
    let yaml = SSM_NODECONFIG.replace("maxPods: 58", "maxPods: 58\n      healthzPort: 20248");
    let node = load(&yaml);
    let r = render(
        &node,
        "1.31.2",
        &HostPaths::default(),
        Path::new("/etc/hybrid-agent/aws-credentials"),
        "hybrid",
    );
    assert_eq!(r.kubelet_healthz_url, "http://127.0.0.1:20248/healthz");
    insta::assert_snapshot!(
        "kubeconfig_custom_credentials",
        file(&r, "/var/lib/kubelet/kubeconfig")
    );
}

#[test]
fn paths_inside_files_follow_the_root() {
    let node = load(SSM_NODECONFIG);
    let root = HostPaths::new("/sandbox");
    let r = render(
        &node,
        "1.31.2",
        &root,
        Path::new("/sandbox/root/.aws/credentials"),
        "default",
    );
    let containerd = file(&r, "/etc/containerd/config.toml");
    assert!(
        containerd.contains("root = \"/sandbox/var/lib/containerd\""),
        "{containerd}"
    );
    assert!(
        containerd.contains("address = \"/sandbox/run/containerd/containerd.sock\""),
        "{containerd}"
    );
    assert!(
        containerd.contains("path = \"/sandbox/opt/containerd\""),
        "{containerd}"
    );
    assert!(
        file(&r, "/var/lib/kubelet/kubeconfig")
            .contains("/sandbox/usr/local/bin/aws-iam-authenticator")
    );
    assert!(
        file(&r, "/var/lib/kubelet/kubeconfig").contains("value: /sandbox/root/.aws/credentials"),
        "even the default file is named: systemd gives kubelet no $HOME"
    );
    assert_eq!(
        r.containerd_args,
        vec![
            "--config".to_owned(),
            "/sandbox/etc/containerd/config.toml".to_owned()
        ]
    );
}

#[test]
fn without_systemd_the_cgroup_driver_is_cgroupfs() {
    let node = load(SSM_NODECONFIG);
    let cluster = cluster();
    let paths = HostPaths::default();
    let input = RenderInput {
        node: &node,
        node_name: NODE_NAME,
        cluster: &cluster,
        kubernetes_version: "1.31.2",
        paths: &paths,
        credentials_file: Path::new("/root/.aws/credentials"),
        credentials_profile: "default",
        aws_config_file: None,
        systemd_cgroups: false,
    };
    let r = node::render(&input).unwrap();
    assert!(file(&r, "/etc/containerd/config.toml").contains("SystemdCgroup = false"));
    assert!(
        file(&r, "/etc/kubernetes/kubelet/config.json").contains("\"cgroupDriver\": \"cgroupfs\"")
    );
}

#[test]
fn swap_blocks_unless_kubelet_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    let paths = HostPaths::new(dir.path());
    let node = load(SSM_NODECONFIG);
    node::check_swap(&paths, &node).expect("no /proc/swaps in a sandbox: no swap");
    std::fs::create_dir_all(dir.path().join("proc")).unwrap();
    std::fs::write(
        dir.path().join("proc/swaps"),
        "Filename Type Size Used Priority\n/dev/sda2 partition 1000 0 -2\n",
    )
    .unwrap();
    let err = node::check_swap(&paths, &node).expect_err("swap on");
    assert!(
        err.to_string().contains("/dev/sda2") && err.to_string().contains("failSwapOn"),
        "{err}"
    );
    let allowed =
        load(&SSM_NODECONFIG.replace("maxPods: 58", "maxPods: 58\n      failSwapOn: false"));
    node::check_swap(&paths, &allowed).expect("allowed by failSwapOn: false");
}

#[test]
fn files_are_rewritten_only_when_their_content_changes() {
    let dir = tempfile::tempdir().unwrap();
    let paths = HostPaths::new(dir.path());
    let node = load(SSM_NODECONFIG);
    let creds = paths.aws_credentials();
    let r = render(&node, "1.31.2", &paths, &creds, "default");
    let mut j = Journal::new(paths.clone(), "/var/lib/hybrid-agent/backups", None);
    let first = node::apply(&r, &mut j).unwrap();
    assert!(
        first.iter().all(|a| a.written == Written::Created),
        "{first:?}"
    );
    let mtime = |p: &str| {
        std::fs::metadata(paths.resolve(p))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before = mtime("/etc/containerd/config.toml");

    let mut j2 = Journal::new(paths.clone(), "/var/lib/hybrid-agent/backups", None);
    let second = node::apply(&r, &mut j2).unwrap();
    assert!(
        second.iter().all(|a| a.written == Written::Unchanged),
        "{second:?}"
    );
    assert!(j2.changes().is_empty());
    assert_eq!(mtime("/etc/containerd/config.toml"), before);

    let changed = load(&SSM_NODECONFIG.replace("maxPods: 58", "maxPods: 64"));
    let r2 = render(&changed, "1.31.2", &paths, &creds, "default");
    let mut j3 = Journal::new(paths.clone(), "/var/lib/hybrid-agent/backups", None);
    let third = node::apply(&r2, &mut j3).unwrap();
    let rewritten: Vec<_> = third
        .iter()
        .filter(|a| a.written != Written::Unchanged)
        .map(|a| a.path.display().to_string())
        .collect();
    assert_eq!(
        rewritten,
        vec!["/etc/kubernetes/kubelet/config.json.d/40-nodeadm.conf".to_owned()]
    );
    // And the journal can put the old one back.
    assert!(j3.rollback().is_empty());
    assert!(
        std::fs::read_to_string(
            paths.resolve("/etc/kubernetes/kubelet/config.json.d/40-nodeadm.conf")
        )
        .unwrap()
        .contains("58")
    );
}

/// `systemd-analyze verify` complaints about `unit` (empty = clean: it exits 0 even on warnings,
/// so stderr must be empty too). `unit_path` is searched before the default path.
fn systemd_verify(unit: &str, unit_path: &Path) -> String {
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no", unit])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", unit_path.display()))
        .output()
        .expect("run systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if out.status.success() && stderr.is_empty() {
        String::new()
    } else {
        format!("exit {:?}: {stderr}", out.status.code())
    }
}

#[test]
fn unit_files_for_the_rendered_command_lines_snapshot_and_pass_systemd_analyze() {
    use hybrid_agent::install::tracker::{ContainerdRecord, DISTRO_CONTAINERD};
    use hybrid_agent::join::components;
    let node = load(SSM_NODECONFIG);
    let distro = ContainerdRecord::Distro {
        path: DISTRO_CONTAINERD.into(),
        package: Some("containerd".into()),
    };

    // As written on a real host (--root /).
    let host = HostPaths::default();
    let r = render(
        &node,
        "1.31.2",
        &host,
        Path::new("/root/.aws/credentials"),
        "default",
    );
    let plan = components::plan(&components::records(&host, &r, &distro)).expect("plan");
    let units = plan.systemd_units();
    assert_eq!(units.len(), 2);
    for u in &units {
        insta::assert_snapshot!(
            format!(
                "unit_{}",
                u.path.display().to_string().replace(['/', '.'], "_")
            ),
            u.content
        );
    }

    // Verified in a sandbox where the programs they name exist (systemd-analyze insists).
    let dir = tempfile::tempdir().unwrap();
    let paths = HostPaths::new(dir.path().join("root"));
    for bin in ["/usr/bin/kubelet", "/usr/bin/containerd"] {
        let p = paths.resolve(bin);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy("/bin/true", &p).unwrap();
    }
    let creds = paths.aws_credentials();
    let r = render(&node, "1.31.2", &paths, &creds, "default");
    let plan = components::plan(&components::records(&paths, &r, &distro)).expect("plan");
    let unit_dir = dir.path().join("units");
    for u in plan.systemd_units() {
        let p = unit_dir.join(&u.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &u.content).unwrap();
    }
    assert_eq!(
        systemd_verify(
            &unit_dir.join("kubelet.service").display().to_string(),
            &unit_dir
        ),
        ""
    );
    // The drop-in applies to the distribution's containerd.service, found on the default path.
    assert_eq!(systemd_verify("containerd.service", &unit_dir), "");
    // And the check can fail: a unit naming a program that does not exist.
    std::fs::remove_file(paths.resolve("/usr/bin/kubelet")).unwrap();
    assert_ne!(
        systemd_verify(
            &unit_dir.join("kubelet.service").display().to_string(),
            &unit_dir
        ),
        ""
    );
}

#[test]
fn cluster_details_come_from_a_complete_nodeconfig_and_its_ca_must_be_pem() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(CA_PEM);
    let with = |ca: &str| {
        SSM_NODECONFIG.replace(
            "    region: us-west-2\n",
            &format!("    region: us-west-2\n    apiServerEndpoint: https://api.example.com\n    certificateAuthority: {ca}\n    cidr: 10.100.0.0/16\n"),
        )
    };
    let settings = load_settings(&with(&b64));
    assert!(!node::cluster::needs_describe(&settings));
    let details = node::cluster::details(&settings, None).expect("all three given");
    assert_eq!(details.ca_pem, CA_PEM.as_bytes());
    assert_eq!(details.api_server_endpoint, "https://api.example.com");
    assert_eq!(details.service_cidr.as_deref(), Some("10.100.0.0/16"));
    // base64 of something that is not a certificate
    let err = node::cluster::details(&load_settings(&with("Y2VydGlmaWNhdGVBdXRob3JpdHk=")), None)
        .expect_err("not PEM");
    assert!(
        err.to_string()
            .contains("spec.cluster.certificateAuthority"),
        "{err}"
    );
    // Without them, DescribeCluster is asked (tests/join_sandbox.rs, tests/join_preflight.rs).
    assert!(node::cluster::needs_describe(&load_settings(
        SSM_NODECONFIG
    )));
    // No cidr and no DescribeCluster answer: no cluster DNS address, so no join.
    let no_cidr = load_settings(&with(&b64).replace("    cidr: 10.100.0.0/16\n", ""));
    assert!(node::cluster::needs_describe(&no_cidr));
    let err = node::cluster::details(&no_cidr, None).expect_err("no service CIDR");
    assert!(
        err.to_string().contains("no service CIDR")
            && err.to_string().contains("set spec.cluster.cidr"),
        "{err}"
    );
    // DescribeCluster answered but without a service CIDR: the same.
    let described = node::cluster::Described {
        name: "c".into(),
        status: "ACTIVE".into(),
        version: Some("1.31".into()),
        endpoint: None,
        ca_data: None,
        service_cidr: None,
        remote_node_cidrs: Some(vec!["10.80.0.0/16".into()]),
    };
    let err = node::cluster::details(&no_cidr, Some(&described)).expect_err("no service CIDR");
    assert!(err.to_string().contains("no service CIDR"), "{err}");
    let found = node::cluster::details(
        &no_cidr,
        Some(&node::cluster::Described {
            service_cidr: Some("172.20.0.0/16".into()),
            ..described
        }),
    )
    .expect("learned");
    assert_eq!(found.service_cidr.as_deref(), Some("172.20.0.0/16"));
}
