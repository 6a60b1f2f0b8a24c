//! Shared test plumbing: an in-process devstack, a moto_server from the project's venv, and SDK
//! configs pointed at either.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

/// `2026-11-28T07:00:00Z`: a time as the awsQuery protocol writes it in a form body.
pub fn iso(secs: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).expect("valid time");
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Each datapoint of a GetMetricStatistics answer as (timestamp in seconds, the statistic
/// `value` picks; -1 when absent), oldest first.
pub fn points(
    stats: &aws_sdk_cloudwatch::operation::get_metric_statistics::GetMetricStatisticsOutput,
    value: impl Fn(&aws_sdk_cloudwatch::types::Datapoint) -> Option<f64>,
) -> Vec<(i64, f64)> {
    let mut points: Vec<(i64, f64)> = stats
        .datapoints()
        .iter()
        .map(|d| {
            (
                d.timestamp().map(|t| t.secs()).unwrap_or(0),
                value(d).unwrap_or(-1.0),
            )
        })
        .collect();
    points.sort_by_key(|p| p.0);
    points
}

/// The CIDRs of a cluster's remote node networks (none without a remote network config).
pub fn remote_node_cidrs(cluster: &aws_sdk_eks::types::Cluster) -> Vec<&str> {
    cluster
        .remote_network_config()
        .map(|r| {
            r.remote_node_networks()
                .iter()
                .flat_map(|n| n.cidrs())
                .map(String::as_str)
                .collect()
        })
        .unwrap_or_default()
}

/// The devstack's fixed admin key pair (documented in devstack/src/auth.rs).
pub const ADMIN_ACCESS_KEY_ID: &str = "AKIADEVSTACKADMIN000";
pub const ADMIN_SECRET_ACCESS_KEY: &str = "devstack-admin-secret-key-not-a-real-secret";
pub const REGION: &str = "us-west-2";

pub fn devstack() -> hybrid_devstack::Devstack {
    hybrid_devstack::Devstack::spawn(hybrid_devstack::Config::default()).expect("start devstack")
}

/// An SDK config for `url` with static credentials and SDK retries off (tests see every error).
pub async fn sdk_config(
    url: &str,
    access_key: &str,
    secret: &str,
    token: Option<String>,
) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(access_key, secret, token, None, "test"))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .load()
        .await
}

pub async fn admin_config(url: &str) -> SdkConfig {
    sdk_config(url, ADMIN_ACCESS_KEY_ID, ADMIN_SECRET_ACCESS_KEY, None).await
}

/// A moto_server child on a free loopback port, killed on drop.
pub struct Moto {
    pub url: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts moto_server from `<repo>/.venv` (installed by scripts/setup). A missing moto is a
/// failure with the fix, never a skip.
pub fn moto() -> Moto {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join(".venv/bin/moto_server"));
    assert!(
        bin.exists(),
        "moto_server not found at {} — run scripts/setup (or scripts/test) to install it",
        bin.display()
    );
    let port = free_port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not listen on {url} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Moto { url, child }
}

/// The Python of the venv scripts/setup installs moto (and with it boto3) into: beside
/// `$MOTO_SERVER` when set, else `<repo>/.venv/bin/python`. Missing is a failure with the fix.
pub fn venv_python() -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = std::env::var_os("MOTO_SERVER")
        .map(PathBuf::from)
        .and_then(|m| m.parent().map(PathBuf::from))
        .unwrap_or_else(|| repo.join(".venv/bin"));
    let python = bin_dir.join("python");
    assert!(
        python.exists(),
        "venv python not found at {} — run scripts/setup (or scripts/test) to install it",
        python.display()
    );
    python
}

/// Runs `devstack/tests/boto3/<script>` with the venv's Python against `url` with the admin
/// key pair; panics with the script's output unless it exits 0.
pub fn run_boto3(script: &str, url: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/boto3")
        .join(script);
    let python = venv_python();
    let out = Command::new(&python)
        .arg(&path)
        .arg(url)
        .env("AWS_ACCESS_KEY_ID", ADMIN_ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", ADMIN_SECRET_ACCESS_KEY)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap_or_else(|e| panic!("run {} {}: {e}", python.display(), path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The devstack's admin key pair as SDK credentials.
pub fn admin_credentials() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new(
        ADMIN_ACCESS_KEY_ID,
        ADMIN_SECRET_ACCESS_KEY,
        None,
        None,
        "test",
    )
}

/// POSTs an awsJson 1.1 call (`X-Amz-Target: target`) to `url/`, SigV4-signed for `service`
/// with `creds` (session token included) by the official signer: how any SDK would send an
/// operation its model lacks (SSM's UpdateInstanceInformation).
pub async fn signed_json(
    url: &str,
    service: &str,
    target: &str,
    body: &serde_json::Value,
    creds: &aws_credential_types::Credentials,
) -> reqwest::Response {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let mut request = axum::http::Request::builder()
        .method("POST")
        .uri(format!("{url}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", target)
        .body(body.to_string().into_bytes())
        .expect("request");
    let signable = SignableRequest::new(
        "POST",
        request.uri().to_string(),
        request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii header"))),
        SignableBody::Bytes(request.body()),
    )
    .expect("signable request");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let request = reqwest::Request::try_from(request).expect("reqwest request");
    reqwest::Client::new()
        .execute(request)
        .await
        .expect("devstack answers")
}

/// POSTs an awsQuery form body to `url/`, SigV4-signed for `service` with the admin key.
pub async fn signed_query(url: &str, service: &str, body: String) -> reqwest::Response {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = admin_credentials().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing params")
        .into();
    let mut request = axum::http::Request::builder()
        .method("POST")
        .uri(format!("{url}/"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body.into_bytes())
        .expect("request");
    let signable = SignableRequest::new(
        "POST",
        request.uri().to_string(),
        request
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().expect("ascii header"))),
        SignableBody::Bytes(request.body()),
    )
    .expect("signable request");
    let (instructions, _) = sign(signable, &params).expect("sign").into_parts();
    instructions.apply_to_request_http1x(&mut request);
    let request = reqwest::Request::try_from(request).expect("reqwest request");
    reqwest::Client::new()
        .execute(request)
        .await
        .expect("devstack answers")
}

/// A `k8s-aws-v1.` token presigned with aws-sigv4 (the signer inside aws-sdk-rust, independent
/// of the agent's) the way aws-iam-authenticator presigns it: STS GetCallerIdentity, the signed
/// header `x-k8s-aws-id: <cluster>`, signed with `creds` at `at`.
pub fn presigned_token(creds: &Credentials, cluster: &str, at: std::time::SystemTime) -> String {
    use aws_sigv4::http_request::{
        SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    use base64::Engine;
    let identity = creds.clone().into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(60));
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-west-2")
        .name("sts")
        .time(at)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let url = "https://sts.us-west-2.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15";
    let request = SignableRequest::new(
        "GET",
        url,
        [
            ("host", "sts.us-west-2.amazonaws.com"),
            ("x-k8s-aws-id", cluster),
        ]
        .into_iter(),
        SignableBody::Bytes(&[]),
    )
    .unwrap();
    let (instructions, _) = sign(request, &params).unwrap().into_parts();
    let mut req = axum::http::Request::builder().uri(url).body(()).unwrap();
    instructions.apply_to_request_http1x(&mut req);
    format!(
        "k8s-aws-v1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(req.uri().to_string())
    )
}
