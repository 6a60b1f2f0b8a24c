//! The devstack's IAM Roles Anywhere `CreateSession` is strict where AWS is: requests signed by
//! the agent's X.509 signer are accepted for RSA and ECDSA keys, with and without an
//! intermediate CA, and every tampered or untrusted variant is refused with AccessDenied.

mod identity_support;

use std::time::{Duration, SystemTime};

use hybrid_agent::identity::iam_ra::{
    CertificateChain, IamRaSettings, SignedSession, SigningKey, sign_create_session,
};
use identity_support::*;

const BODY: &[u8] = br#"{"durationSeconds":3600,"roleSessionName":"edge-node-1"}"#;

struct Material {
    _dir: tempfile::TempDir,
    settings: IamRaSettings,
    chain: CertificateChain,
    key: SigningKey,
}

/// Certificate (optionally only its leaf) and key from the devstack CA, as files the agent reads.
fn material(ds: &hybrid_devstack::Devstack, issued: &Issued, leaf_only: bool) -> Material {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_pem = if leaf_only {
        let end = "-----END CERTIFICATE-----\n";
        let i = issued.certificate_pem.find(end).expect("a certificate") + end.len();
        issued.certificate_pem[..i].to_string()
    } else {
        issued.certificate_pem.clone()
    };
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, cert_pem).expect("cert");
    std::fs::write(&key, &issued.private_key_pem).expect("key");
    let settings = IamRaSettings {
        endpoint: reqwest::Url::parse(&ds.url).expect("url"),
        region: REGION.into(),
        trust_anchor_arn: issued.trust_anchor_arn.clone(),
        profile_arn: issued.profile_arn.clone(),
        role_arn: issued.role_arn.clone(),
        certificate_path: cert.clone(),
        private_key_path: key.clone(),
        session_name: Some("edge-node-1".into()),
        duration: Duration::from_secs(3600),
    };
    Material {
        chain: CertificateChain::load(&cert).expect("chain"),
        key: SigningKey::load(&key).expect("key"),
        settings,
        _dir: dir,
    }
}

fn sign(m: &Material, at: SystemTime) -> SignedSession {
    sign_create_session(&m.settings, &m.chain, &m.key, at, BODY).expect("sign")
}

/// Sends a signed request (optionally with another body); returns status, error type, body.
fn send(s: &SignedSession, body: &[u8]) -> (u16, String, String) {
    runtime().block_on(async {
        let mut req = reqwest::Client::new().post(s.url.clone());
        for (n, v) in &s.headers {
            req = req.header(*n, v);
        }
        let resp = req.body(body.to_vec()).send().await.expect("send");
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, kind, resp.text().await.expect("body"))
    })
}

fn assert_denied(r: (u16, String, String), why: &str) {
    assert_eq!(
        (r.0, r.1.as_str()),
        (403, "AccessDeniedException"),
        "{why}: {}",
        r.2
    );
}

#[test]
fn valid_requests_for_every_key_type_and_chain() {
    let ds = devstack(Duration::from_secs(3600));
    for (rsa, intermediate) in [(true, false), (false, false), (true, true), (false, true)] {
        let m = material(&ds, &issue_certificate(&ds, rsa, intermediate, None), false);
        let (status, kind, body) = send(&sign(&m, SystemTime::now()), BODY);
        assert_eq!(
            status, 201,
            "rsa={rsa} intermediate={intermediate}: {kind} {body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let c = &v["credentialSet"][0]["credentials"];
        assert!(
            c["accessKeyId"]
                .as_str()
                .expect("key id")
                .starts_with("ASIA"),
            "{v}"
        );
        assert!(
            c["expiration"].as_str().expect("expiration").ends_with('Z'),
            "{v}"
        );
    }
}

#[test]
fn tampered_or_untrusted_requests_are_denied() {
    let ds = devstack(Duration::from_secs(3600));
    let issued = issue_certificate(&ds, false, true, None);
    let m = material(&ds, &issued, false);

    // Body changed after signing.
    assert_denied(
        send(
            &sign(&m, SystemTime::now()),
            br#"{"durationSeconds":43200}"#,
        ),
        "tampered body",
    );

    // A signed header changed after signing.
    let mut s = sign(&m, SystemTime::now());
    for (n, v) in &mut s.headers {
        if *n == "x-amz-date" {
            let t = SystemTime::now() + Duration::from_secs(60);
            *v = time::OffsetDateTime::from(t)
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .expect("format");
        }
    }
    assert_denied(send(&s, BODY), "tampered date header");

    // Signed ten minutes ago: outside the 5-minute window.
    let r = send(
        &sign(&m, SystemTime::now() - Duration::from_secs(600)),
        BODY,
    );
    assert!(r.2.contains("Signature expired"), "{}", r.2);
    assert_denied(r, "stale request");

    // The leaf alone, without the intermediate that issued it: no chain to the anchor.
    let leaf_only = material(&ds, &issued, true);
    let r = send(&sign(&leaf_only, SystemTime::now()), BODY);
    assert!(
        r.2.contains("not issued by") || r.2.contains("chain"),
        "{}",
        r.2
    );
    assert_denied(r, "missing intermediate");

    // Signed with a key that is not the certificate's.
    let other = issue_certificate(&ds, false, false, None);
    let mut wrong_key = material(&ds, &issued, false);
    wrong_key.key = material(&ds, &other, false).key;
    assert_denied(
        send(&sign(&wrong_key, SystemTime::now()), BODY),
        "wrong key",
    );

    // An expired certificate.
    let expired = material(&ds, &issue_certificate(&ds, true, false, Some(-60)), false);
    let r = send(&sign(&expired, SystemTime::now()), BODY);
    assert!(r.2.contains("not valid at this time"), "{}", r.2);
    assert_denied(r, "expired certificate");

    // A trust anchor the devstack does not have.
    let mut unknown = material(&ds, &issued, false);
    unknown.settings.trust_anchor_arn = format!("{}-other", unknown.settings.trust_anchor_arn);
    assert_denied(
        send(&sign(&unknown, SystemTime::now()), BODY),
        "unknown trust anchor",
    );

    // A self-signed impostor certificate.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "hybrid-devstack test CA");
    let cert = params.self_signed(&key).expect("self-signed");
    let impostor = Issued {
        certificate_pem: cert.pem(),
        private_key_pem: key.serialize_pem(),
        ..issued.clone()
    };
    let r = send(
        &sign(&material(&ds, &impostor, false), SystemTime::now()),
        BODY,
    );
    assert!(r.2.contains("untrusted certificate"), "{}", r.2);
    assert_denied(r, "impostor with the CA's name");
}

// ---------------------------------------------------------------------------------------------
// credential_process: kubelet's credentials without the daemon

// The full-join fixture (release mirror, sandbox node); it loads the shared helpers too.
#[allow(clippy::duplicate_mod)]
#[path = "install_support/mod.rs"]
mod install_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// Host path of nodeadm's default AWS config file for IAM Roles Anywhere.
const AWS_CONFIG: &str = "etc/aws/hybrid/config";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

/// The `credential_process` of `[profile NAME]` in an AWS config file, read as the SDKs do.
fn credential_process_of(config: &Path, profile: &str) -> String {
    let text = std::fs::read_to_string(config).expect("AWS config file");
    let header = format!("[profile {profile}]");
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == header;
        } else if inside
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == "credential_process"
        {
            return v.trim().to_owned();
        }
    }
    panic!(
        "no credential_process in {header} of {}:\n{text}",
        config.display()
    );
}

/// Runs a credential_process command as aws-iam-authenticator's Go SDK does (`sh -c`), in a
/// clean environment (no AWS_ENDPOINT_URL, no HOME: what kubelet's unit gives it).
fn run_credential_process(command: &str) -> serde_json::Value {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run credential_process");
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("credential_process JSON")
}

#[test]
fn credential_process_gives_working_credentials_with_the_daemon_stopped() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let issued = issue_certificate(&ds, false, true, None);
    host.install_certificate(&issued);
    let out = host.join_iam_ra(&issued, &[]);
    assert!(out.status.success(), "{}", text(&out));

    let config = host.path(AWS_CONFIG);
    assert_eq!(
        mode(&config),
        0o644,
        "nodeadm's mode: the file holds no secret"
    );
    let command = credential_process_of(&config, "default");
    assert_eq!(command, credential_process_of(&config, "hybrid"));
    assert!(
        command.starts_with(&format!(
            "{} --root ",
            std::fs::canonicalize(AGENT).expect("agent path").display()
        )),
        "{command}"
    );
    assert!(command.contains(" credential-process "), "{command}");

    // No daemon runs: the join's credentials still have an hour, so they are served as they are.
    let daemon = host.credentials().expect("join wrote credentials");
    let before = calls(&ds, "rolesanywhere/CreateSession");
    let cached = run_credential_process(&command);
    assert_eq!(cached["AccessKeyId"], daemon.access_key_id.as_str());
    assert_eq!(calls(&ds, "rolesanywhere/CreateSession"), before);

    // The daemon's credentials gone (stopped long ago): the command signs its own CreateSession.
    std::fs::remove_file(host.path(CREDENTIALS)).expect("remove the daemon's file");
    let fresh = run_credential_process(&command);
    assert_eq!(calls(&ds, "rolesanywhere/CreateSession"), before + 1);
    assert_eq!(fresh["Version"], 1);
    let key = fresh["AccessKeyId"].as_str().expect("AccessKeyId");
    assert!(
        key.starts_with("ASIA") && key != daemon.access_key_id,
        "{fresh}"
    );
    let secret = fresh["SecretAccessKey"].as_str().expect("SecretAccessKey");
    let token = fresh["SessionToken"].as_str().expect("SessionToken");
    let expiration = time::OffsetDateTime::parse(
        fresh["Expiration"].as_str().expect("Expiration"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339 Expiration");
    let left = expiration - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(50) && left <= time::Duration::minutes(61),
        "{left}"
    );

    // The credentials work: STS GetCallerIdentity as the node's role session.
    let file = host.scratch.path().join("from-credential-process");
    std::fs::write(
        &file,
        format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\naws_session_token = {token}\n"),
    )
    .expect("write");
    let arn = sts_with_file(&ds, &file, "default").expect("sts");
    assert!(
        arn.contains("assumed-role/AmazonEKSHybridNodesRole/edge-node-1"),
        "{arn}"
    );
}

#[test]
fn credential_process_with_a_missing_certificate_fails_naming_it() {
    let ds = devstack(Duration::from_secs(3600));
    let host = Host::new(&ds);
    let issued = issue_certificate(&ds, true, false, None);
    host.install_certificate(&issued);
    let out = host.join_iam_ra(&issued, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let command = credential_process_of(&host.path(AWS_CONFIG), "default");
    let cert = host.path("etc/iam/pki/server.pem");
    std::fs::remove_file(&cert).expect("remove certificate");
    std::fs::remove_file(host.path(CREDENTIALS)).expect("remove the daemon's file");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env_clear()
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no partial JSON on stdout");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&cert.display().to_string()), "{err}");
}

/// The exec env of the kubeconfig `join` rendered, as (name, value) pairs.
fn kubeconfig_env(node: &install_support::Node) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(node.path("var/lib/kubelet/kubeconfig")).expect("kubeconfig");
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("yaml");
    doc["users"][0]["user"]["exec"]["env"]
        .as_sequence()
        .unwrap_or_else(|| panic!("no exec env:\n{text}"))
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_owned(),
                e["value"].as_str().expect("value").to_owned(),
            )
        })
        .collect()
}

fn mirror_fixture() -> (tempfile::TempDir, hybrid_devstack::Devstack) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = dir.path().join("mirror");
    install_support::write_release(
        &mirror,
        &install_support::ReleaseSpec::random("1.31.2", 1 << 20),
    );
    let ds = install_support::devstack(&mirror);
    (dir, ds)
}

#[test]
fn kubeconfig_names_the_authenticators_credentials_for_ssm_and_iam_ra_and_leave_removes_the_aws_config()
 {
    let (_m, ds) = mirror_fixture();

    // SSM: the shared credentials file and its profile, never $HOME.
    let node = install_support::Node::new(&ds, &install_support::create_activation(&ds));
    let run = node.join(&ds, &["--skip", "start,wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        kubeconfig_env(&node),
        [
            ("AWS_PROFILE".to_owned(), "default".to_owned()),
            (
                "AWS_SHARED_CREDENTIALS_FILE".to_owned(),
                node.path("root/.aws/credentials").display().to_string()
            ),
        ]
    );

    // IAM Roles Anywhere with a NodeConfig naming its own awsConfigPath.
    let node = install_support::Node::new(&ds, &("unused".into(), "unused".into()));
    let issued = issue_certificate(&ds, false, false, None);
    let pki = node.path("etc/iam/pki");
    std::fs::create_dir_all(&pki).expect("pki");
    std::fs::write(pki.join("server.pem"), &issued.certificate_pem).expect("cert");
    std::fs::write(pki.join("server.key"), &issued.private_key_pem).expect("key");
    std::fs::write(
        &node.nodeconfig,
        format!(
            "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  cluster:\n    name: {}\n    region: {}\n  kubelet:\n    config:\n      healthzPort: {}\n  hybrid:\n    iamRolesAnywhere:\n      nodeName: edge-node-1\n      trustAnchorArn: {}\n      profileArn: {}\n      roleArn: {}\n      certificatePath: /etc/iam/pki/server.pem\n      privateKeyPath: /etc/iam/pki/server.key\n      awsConfigPath: /etc/aws/custom/config\n",
            install_support::CLUSTER,
            install_support::REGION,
            node.healthz_port,
            issued.trust_anchor_arn,
            issued.profile_arn,
            issued.role_arn
        ),
    )
    .expect("nodeconfig");
    let run = node.join(&ds, &["--skip", "start,wait"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let config = node.path("etc/aws/custom/config");
    assert_eq!(
        kubeconfig_env(&node),
        [
            ("AWS_PROFILE".to_owned(), "default".to_owned()),
            ("AWS_CONFIG_FILE".to_owned(), config.display().to_string()),
        ]
    );
    assert!(
        credential_process_of(&config, "default").contains(" credential-process "),
        "the file names our command"
    );
    assert!(
        !node.path(AWS_CONFIG).exists(),
        "only the configured path is written"
    );

    let run = node.run(&["leave", "--force"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        !config.exists(),
        "leave removes the AWS config file join wrote"
    );
}
