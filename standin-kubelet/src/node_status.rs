//! The stand-in's part in the cluster: register the Node and post its Ready condition, the way
//! kubelet does with its kubeconfig — TLS against the kubeconfig's CA, a bearer token from the
//! kubeconfig's exec plugin (aws-iam-authenticator on a real node), `POST /api/v1/nodes` once,
//! then a merge patch of `status.conditions` every few seconds. Ready is True while the stand-in
//! is healthy, False otherwise (in `no-cni` mode with the message kubelet gives while no CNI
//! runs). Failures are printed and retried; the stand-in keeps serving /healthz regardless.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{Mode, Shared, say};

/// How often the status is posted (kubelet's nodeStatusUpdateFrequency is 10 s; shorter here
/// so tests see a change quickly).
const STATUS_INTERVAL: Duration = Duration::from_secs(3);

/// What kubelet reports while the container runtime has no network plugin.
const NO_CNI_MESSAGE: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

#[derive(Deserialize)]
struct Kubeconfig {
    clusters: Vec<ClusterEntry>,
    users: Vec<UserEntry>,
}

#[derive(Deserialize)]
struct ClusterEntry {
    cluster: ClusterBody,
}

#[derive(Deserialize)]
struct UserEntry {
    user: UserBody,
}

#[derive(Deserialize)]
struct ClusterBody {
    server: String,
    #[serde(rename = "certificate-authority")]
    certificate_authority: PathBuf,
}

#[derive(Deserialize)]
struct UserBody {
    exec: Exec,
}

#[derive(Deserialize)]
struct Exec {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Option<Vec<EnvVar>>,
}

#[derive(Deserialize)]
struct EnvVar {
    name: String,
    value: String,
}

/// The first cluster and user of a kubeconfig.
fn load(path: &PathBuf) -> Result<(ClusterBody, Exec), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: Kubeconfig = serde_yaml_ng::from_str(&text)
        .map_err(|e| format!("{} is not a kubeconfig: {e}", path.display()))?;
    let cluster = doc
        .clusters
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} has no cluster", path.display()))?
        .cluster;
    let user = doc
        .users
        .into_iter()
        .next()
        .ok_or_else(|| format!("{} has no user", path.display()))?
        .user;
    Ok((cluster, user.exec))
}

/// Runs the exec plugin and returns `status.token` of its ExecCredential.
async fn token(exec: &Exec) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&exec.command);
    cmd.args(&exec.args);
    for e in exec.env.iter().flatten() {
        cmd.env(&e.name, &e.value);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| format!("cannot run the exec plugin {}: {e}", exec.command))?;
    if !out.status.success() {
        return Err(format!(
            "the exec plugin {} failed ({}): {}",
            exec.command,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "the exec plugin {} printed no ExecCredential: {e}",
            exec.command
        )
    })?;
    v["status"]["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("the exec plugin {} printed no status.token", exec.command))
}

fn condition(mode: Mode) -> serde_json::Value {
    let (status, reason, message) = match mode {
        Mode::Healthy => (
            "True",
            "KubeletReady",
            "kubelet is posting ready status (STAND-IN)",
        ),
        Mode::NoCni => ("False", "KubeletNotReady", NO_CNI_MESSAGE),
        _ => (
            "False",
            "KubeletNotReady",
            "the stand-in is told to be unhealthy",
        ),
    };
    serde_json::json!([{ "type": "Ready", "status": status, "reason": reason, "message": message }])
}

/// Registers the Node and keeps its Ready condition current, until the process ends.
pub async fn run(kubeconfig: PathBuf, name: String, shared: Arc<Shared>) {
    let mut api: Option<Api> = None;
    let mut registered = false;
    let mut last_problem = String::new();
    loop {
        // The kubeconfig and its CA are read once, as kubelet does; retried until they are usable.
        let result = match &api {
            Some(api) => post(api, &name, shared.current(), &mut registered).await,
            None => Api::load(&kubeconfig).map(|a| api = Some(a)),
        };
        match result {
            Ok(()) => last_problem.clear(),
            Err(problem) => {
                // Once per distinct problem: the retry every few seconds would flood the log.
                if problem != last_problem {
                    say(&format!("node status: {problem}"));
                    last_problem = problem;
                }
            }
        }
        if api.is_some() && !registered && last_problem.is_empty() {
            // Loaded just now: register without waiting a whole interval.
            continue;
        }
        tokio::time::sleep(STATUS_INTERVAL).await;
    }
}

/// The API server as the kubeconfig describes it.
struct Api {
    server: String,
    exec: Exec,
    client: reqwest::Client,
}

impl Api {
    fn load(kubeconfig: &PathBuf) -> Result<Api, String> {
        let (cluster, exec) = load(kubeconfig)?;
        let ca = std::fs::read(&cluster.certificate_authority).map_err(|e| {
            format!(
                "cannot read the CA {}: {e}",
                cluster.certificate_authority.display()
            )
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&ca)
            .map_err(|e| format!("the CA is not PEM: {e}"))?;
        let client = reqwest::Client::builder()
            .tls_certs_only(certs)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Api {
            server: cluster.server.trim_end_matches('/').to_owned(),
            exec,
            client,
        })
    }
}

async fn post(api: &Api, name: &str, mode: Mode, registered: &mut bool) -> Result<(), String> {
    let (client, server) = (&api.client, api.server.as_str());
    let token = token(&api.exec).await?;
    if !*registered {
        let node = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            "status": { "conditions": condition(mode) },
        });
        let resp = client
            .post(format!("{server}/api/v1/nodes"))
            .bearer_auth(&token)
            .json(&node)
            .send()
            .await
            .map_err(|e| format!("POST {server}/api/v1/nodes: {e}"))?;
        match resp.status().as_u16() {
            201 | 409 => {
                say(&format!("registered node {name} with {server}"));
                *registered = true;
            }
            code => {
                return Err(format!(
                    "POST {server}/api/v1/nodes answered {code}: {}",
                    resp.text().await.unwrap_or_default()
                ));
            }
        }
    }
    let patch = serde_json::json!({ "status": { "conditions": condition(mode) } });
    let resp = client
        .patch(format!("{server}/api/v1/nodes/{name}/status"))
        .bearer_auth(&token)
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .map_err(|e| format!("PATCH node status: {e}"))?;
    match resp.status().as_u16() {
        200 => Ok(()),
        404 => {
            // Deleted behind our back: register again, as kubelet does.
            *registered = false;
            Err(format!(
                "node {name} is gone from {server}; registering again"
            ))
        }
        code => Err(format!(
            "PATCH node status answered {code}: {}",
            resp.text().await.unwrap_or_default()
        )),
    }
}
