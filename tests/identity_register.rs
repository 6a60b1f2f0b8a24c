//! `hybrid-agent join`'s identity phase against the devstack: SSM registration and IAM Roles
//! Anywhere, the credentials file it writes (checked by an AWS SDK reading it, SigV4-verified by
//! the devstack), re-running join, and every registration failure with its exit code, message,
//! and the promise that nothing was written.

mod identity_support;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use identity_support::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn ssm_join_writes_a_private_credentials_file_that_sts_accepts() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let out = host.join(&ds, Provider::Ssm, &[]);
    assert!(out.status.success(), "join failed:\n{}", text(&out));

    let creds_file = host.path(CREDENTIALS);
    assert_eq!(mode(&creds_file), 0o600);
    let creds = host
        .credentials()
        .expect("default profile with all three keys");
    assert!(
        creds.access_key_id.starts_with("ASIA"),
        "{}",
        creds.access_key_id
    );

    let store = host.store();
    let reg = store
        .load_registration()
        .expect("registration")
        .expect("registered");
    assert!(reg.instance_id.starts_with("mi-"));
    assert_eq!(reg.region, REGION);
    assert_eq!(mode(&store.key_path()), 0o600);
    assert!(!store.pending_key_path().exists());
    assert!(store.load_fingerprint().expect("fingerprint").is_some());
    assert!(
        text(&out).contains(&reg.instance_id),
        "join should say which instance it registered:\n{}",
        text(&out)
    );

    let arn = sts_with_file(&ds, &creds_file, "default")
        .expect("GetCallerIdentity with the written file");
    assert!(arn.contains(&reg.instance_id), "{arn}");
    host.assert_no_secret_in_output(&[]);
}

#[test]
fn rejoin_reuses_the_identity_and_reregister_makes_a_new_one() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let a = create_activation(&ds, 2, Duration::from_secs(3600));
    let out = host.join_ssm(&a, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let store = host.store();
    let first = store
        .load_registration()
        .expect("load")
        .expect("registered");
    let fingerprint = store
        .load_fingerprint()
        .expect("load")
        .expect("fingerprint");
    let key = std::fs::read(store.key_path()).expect("key");

    let out = host.join_ssm(&a, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        store
            .load_registration()
            .expect("load")
            .expect("registered")
            .instance_id,
        first.instance_id
    );
    assert_eq!(
        std::fs::read(store.key_path()).expect("key"),
        key,
        "re-running join must not replace the key"
    );
    assert!(text(&out).contains("already registered"), "{}", text(&out));

    let out = host.join_ssm(&a, &["--reregister"]);
    assert!(out.status.success(), "{}", text(&out));
    let second = store
        .load_registration()
        .expect("load")
        .expect("registered");
    assert_ne!(second.instance_id, first.instance_id);
    assert_ne!(
        std::fs::read(store.key_path()).expect("key"),
        key,
        "--reregister makes a fresh key"
    );
    // The fingerprint is the machine's and survives re-registration.
    assert_eq!(
        store
            .load_fingerprint()
            .expect("load")
            .expect("fingerprint"),
        fingerprint
    );
    assert!(
        sts_with_file(&ds, &host.path(CREDENTIALS), "default")
            .expect("sts")
            .contains(&second.instance_id)
    );
    host.assert_no_secret_in_output(&[]);
}

#[test]
fn other_profiles_in_the_credentials_file_are_kept() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let file = host.path(CREDENTIALS);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(
        &file,
        "[admin]\naws_access_key_id = AKIAEXAMPLEADMIN\naws_secret_access_key = keep-me\n",
    )
    .expect("seed");
    let out = host.join(&ds, Provider::Ssm, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let text_now = std::fs::read_to_string(&file).expect("read");
    assert!(
        text_now.contains(
            "[admin]\naws_access_key_id = AKIAEXAMPLEADMIN\naws_secret_access_key = keep-me\n"
        ),
        "{text_now}"
    );
    assert!(host.credentials().is_some());
}

/// Runs a join that must fail and checks the exit code, the message, and that the host root is
/// exactly as it was (the activation code file lives outside it).
fn failing_join(host: &Host, a: &Activation, code: i32, needles: &[&str]) {
    let before = files_under(host.root.path());
    let out = host.join_ssm(a, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(code), "{t}");
    for n in needles {
        assert!(t.contains(n), "message should mention `{n}`:\n{t}");
    }
    assert_eq!(
        files_under(host.root.path()),
        before,
        "a failed registration must leave no state:\n{t}"
    );
    host.assert_no_secret_in_output(&[]);
}

#[test]
fn expired_activation_exits_10_says_so_and_writes_nothing() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let a = create_activation(&ds, 1, Duration::from_secs(2));
    std::thread::sleep(Duration::from_secs(3));
    failing_join(
        &host,
        &a,
        10,
        &["expired", "create-activation", "Nothing was written"],
    );
}

#[test]
fn wrong_code_exits_11() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let mut a = create_activation(&ds, 1, Duration::from_secs(3600));
    a.code = format!("{}x", a.code);
    failing_join(&host, &a, 11, &["rejected activation", "region"]);
}

#[test]
fn registration_limit_exits_12() {
    let ds = devstack(Duration::from_secs(3600));
    let a = create_activation(&ds, 1, Duration::from_secs(3600));
    let first = Host::new(&ds);
    assert!(first.join_ssm(&a, &[]).status.success());
    let second = Host::new(&ds);
    failing_join(&second, &a, 12, &["registration limit", "deregister"]);
}

#[test]
fn unreachable_endpoint_exits_13_and_tls_failure_exits_14() {
    let ds = devstack(Duration::from_secs(3600));
    let a = create_activation(&ds, 1, Duration::from_secs(3600));

    let mut host = Host::new(&ds);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    host.endpoint = format!("http://127.0.0.1:{closed}");
    failing_join(&host, &a, 13, &["cannot reach", "Nothing was written"]);

    // The devstack speaks plain HTTP: an https:// endpoint fails in the TLS handshake.
    let mut host = Host::new(&ds);
    host.endpoint = ds.url.replace("http://", "https://");
    failing_join(&host, &a, 14, &["TLS", "Nothing was written"]);
}

#[test]
fn iam_roles_anywhere_join_with_rsa_ecdsa_and_intermediate_chain() {
    let ds = devstack(Duration::from_secs(3600));
    for (rsa, intermediate) in [(true, false), (false, false), (false, true), (true, true)] {
        let host = Host::new(&ds);
        let out = host.join(&ds, Provider::IamRa { rsa, intermediate }, &[]);
        assert!(
            out.status.success(),
            "rsa={rsa} intermediate={intermediate}:\n{}",
            text(&out)
        );
        assert_eq!(mode(&host.path(CREDENTIALS)), 0o600);
        let arn = sts_with_file(&ds, &host.path(CREDENTIALS), "default").expect("sts");
        assert!(
            arn.contains("assumed-role/AmazonEKSHybridNodesRole/edge-node-1"),
            "{arn}"
        );
        host.assert_no_secret_in_output(&[]);
    }
}

#[test]
fn iam_roles_anywhere_rejections_write_nothing() {
    let ds = devstack(Duration::from_secs(3600));
    // An expired certificate is caught before any request.
    let host = Host::new(&ds);
    let expired = issue_certificate(&ds, false, false, Some(-60));
    host.install_certificate(&expired);
    let before = files_under(host.root.path());
    let out = host.join_iam_ra(&expired, &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("expired"), "{}", text(&out));
    assert_eq!(files_under(host.root.path()), before);

    // A certificate from another CA is refused by the service.
    let host = Host::new(&ds);
    let good = issue_certificate(&ds, false, false, None);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "impostor");
    let cert = params.self_signed(&key).expect("self-signed");
    let impostor = Issued {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        ..good
    };
    host.install_certificate(&impostor);
    let before = files_under(host.root.path());
    let out = host.join_iam_ra(&impostor, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("AccessDeniedException"),
        "{}",
        text(&out)
    );
    assert_eq!(files_under(host.root.path()), before);
    host.assert_no_secret_in_output(&[]);
}

/// An unchanged nodeadm NodeConfig (`--config-source`) with `enableCredentialsFile`, and the
/// agent config moving the shared credentials file and profile: both files are kept.
#[test]
fn nodeconfig_with_credentials_file_and_custom_profile() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let issued = issue_certificate(&ds, true, false, None);
    host.install_certificate(&issued);
    host.agent_config(
        "[credentials]\nfile = \"/etc/hybrid-agent/aws/credentials\"\nprofile = \"hybrid\"\n",
    );
    let node = host.scratch.path().join("nodeconfig.yaml");
    std::fs::write(
        &node,
        format!(
            "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: {CLUSTER}\n    region: {REGION}\n  hybrid:\n    enableCredentialsFile: true\n    iamRolesAnywhere:\n      nodeName: edge-node-1\n      trustAnchorArn: {}\n      profileArn: {}\n      roleArn: {}\n      certificatePath: /etc/iam/pki/server.pem\n      privateKeyPath: /etc/iam/pki/server.key\n",
            issued.trust_anchor_arn, issued.profile_arn, issued.role_arn
        ),
    )
    .expect("nodeconfig");
    let source = format!("file://{}", node.display());
    let out = host.agent(&[
        "join",
        "--config-source",
        &source,
        "--skip",
        "install,render,start",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    host.remember_credentials();
    assert!(
        !host.path(CREDENTIALS).exists(),
        "the default file must not be written when another is configured"
    );
    for file in [
        "etc/hybrid-agent/aws/credentials",
        "eks-hybrid/.aws/credentials",
    ] {
        let path = host.path(file);
        assert_eq!(mode(&path), 0o600, "{file}");
        let v = hybrid_agent::identity::credfile::read_profile_file(&path, "hybrid")
            .expect("read")
            .expect("profile");
        host.remember_secret(v.secret_access_key.expose());
        sts_with_file(&ds, &path, "hybrid").unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    host.assert_no_secret_in_output(&[]);
}
