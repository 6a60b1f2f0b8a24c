//! `hybrid-devstack` — the local AWS stand-in for hybrid-agent's demo, tests and benchmarks.
//!
//! Listens on 127.0.0.1 and prints its URL on the first line of stdout, so scripts can read it:
//! `url=$(hybrid-devstack --port 0 | head -1)`. With `--tls` the URL is `https://` and the path
//! of the CA bundle that verifies it follows the URL lines.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "hybrid-devstack",
    version,
    about = "Local AWS stand-in for hybrid-agent: SSM hybrid activation, CloudWatch Logs and metrics, EKS, STS and an artifact mirror on 127.0.0.1"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TCP port on 127.0.0.1 (0 picks a free port; the URL is printed either way).
    #[arg(long, default_value_t = 4566)]
    port: u16,
    /// Persist state (activations, instances, credentials, logs, metrics) here across restarts.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Lifetime of issued instance credentials, in seconds.
    #[arg(long, default_value_t = 3600)]
    token_lifetime: u64,
    /// Directory served by the artifact mirror at /mirror/.
    #[arg(long)]
    mirror_dir: Option<PathBuf>,
    /// Region the stand-in answers as.
    #[arg(long, default_value = "us-west-2")]
    region: String,
    /// Probability (0..1) of an injected 500 on every operation.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Probability (0..1) of an injected throttling error on every operation.
    #[arg(long, default_value_t = 0.0)]
    throttle_rate: f64,
    /// Added latency on every operation, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Seconds added to the devstack's clock (negative = behind the host).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_offset: i64,
    /// Also start a stand-in Kubernetes API server (HTTPS, certificate from the cluster CA,
    /// EKS token authentication) for the demo cluster, make it the cluster's endpoint, and print
    /// its URL on the second line of stdout.
    #[arg(long)]
    kube_api: bool,
    /// Serve HTTPS instead of plain HTTP, as AWS does: a CA made at start signs the listener's
    /// certificate for 127.0.0.1 and localhost. The CA's PEM goes to <state-dir>/tls/ca.pem (a
    /// temporary directory, removed at exit, without --state-dir) and its path is printed on the
    /// line after the URL(s).
    #[arg(long)]
    tls: bool,
}

/// Client-side helpers that talk to a running devstack with the official AWS SDK, as a user
/// would talk to AWS.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create an SSM hybrid activation (CreateActivation through aws-sdk-ssm) and print it as
    /// JSON: {"ActivationId": "...", "ActivationCode": "..."}.
    CreateActivation {
        /// Devstack URL (as printed at its start).
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint: String,
        /// IAM role the hybrid node assumes.
        #[arg(long, default_value = "AmazonEKSHybridNodesRole")]
        iam_role: String,
        /// How many machines may register with it.
        #[arg(long, default_value_t = 1)]
        registration_limit: i32,
        /// Seconds until the activation expires.
        #[arg(long, default_value_t = 86_400)]
        expires_in: u64,
        /// Region.
        #[arg(long, default_value = "us-west-2")]
        region: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::CreateActivation {
        endpoint,
        iam_role,
        registration_limit,
        expires_in,
        region,
    }) = args.command
    {
        return create_activation(
            &endpoint,
            &iam_role,
            registration_limit,
            expires_in,
            &region,
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEVSTACK_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut faults = hybrid_devstack::control::Faults {
        clock_offset_secs: args.clock_offset,
        ..Default::default()
    };
    if args.error_rate > 0.0 || args.throttle_rate > 0.0 || args.latency_ms > 0 {
        faults.rules.push(hybrid_devstack::control::FaultRule {
            error_rate: args.error_rate,
            throttle_rate: args.throttle_rate,
            latency_ms: args.latency_ms,
            ..Default::default()
        });
    }
    let args_kube_api = args.kube_api;
    // The directory the TLS CA is written under; without --state-dir a temporary one, removed
    // at exit.
    let temp_dir = (args.tls && args.state_dir.is_none())
        .then(|| std::env::temp_dir().join(format!("hybrid-devstack-{}", std::process::id())));
    let tls_dir = if args.tls {
        args.state_dir.clone().or_else(|| temp_dir.clone())
    } else {
        None
    };
    let config = hybrid_devstack::Config {
        port: args.port,
        state_dir: args.state_dir,
        token_lifetime: Duration::from_secs(args.token_lifetime),
        mirror_dir: args.mirror_dir,
        region: args.region,
        faults,
        ..Default::default()
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hybrid-devstack: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        let (listener, state) = match hybrid_devstack::server::bind(config).await {
            Ok(v) => v,
            Err(e) => {
                eprintln!("hybrid-devstack: {e}");
                return ExitCode::FAILURE;
            }
        };
        let tls = match &tls_dir {
            None => None,
            Some(dir) => match hybrid_devstack::tls::listener_tls(dir) {
                Ok(v) => Some(v),
                Err(e) => {
                    eprintln!("hybrid-devstack: cannot set up TLS: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        match listener.local_addr() {
            Ok(addr) => {
                use std::io::Write;
                let scheme = if tls.is_some() { "https" } else { "http" };
                println!("{scheme}://{addr}");
                if args_kube_api {
                    match hybrid_devstack::kube::start(&state, hybrid_devstack::eks::DEMO_CLUSTER)
                        .await
                    {
                        Ok(endpoint) => println!("{endpoint}"),
                        Err(e) => {
                            eprintln!(
                                "hybrid-devstack: cannot start the API server stand-in: {}",
                                e.message
                            );
                            return ExitCode::FAILURE;
                        }
                    }
                }
                if let Some((_, ca_file)) = &tls {
                    println!("{}", ca_file.display());
                }
                let _ = std::io::stdout().flush();
            }
            Err(e) => {
                eprintln!("hybrid-devstack: no local address: {e}");
                return ExitCode::FAILURE;
            }
        }
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        };
        match tls {
            None => {
                hybrid_devstack::server::serve(listener, state, shutdown).await;
                ExitCode::SUCCESS
            }
            Some((acceptor, _)) => {
                match hybrid_devstack::server::serve_tls(listener, state, acceptor, shutdown).await
                {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("hybrid-devstack: {e}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    });
    if let Some(dir) = temp_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

fn create_activation(
    endpoint: &str,
    iam_role: &str,
    limit: i32,
    expires_in: u64,
    region: &str,
) -> ExitCode {
    use aws_sdk_ssm::primitives::DateTime;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hybrid-devstack: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_credential_types::Credentials::new(
                hybrid_devstack::auth::ADMIN_ACCESS_KEY_ID,
                hybrid_devstack::auth::ADMIN_SECRET_ACCESS_KEY,
                None,
                None,
                "devstack-admin",
            ))
            .load()
            .await;
        let ssm = aws_sdk_ssm::Client::new(&config);
        let expires = std::time::SystemTime::now() + Duration::from_secs(expires_in);
        match ssm
            .create_activation()
            .iam_role(iam_role)
            .registration_limit(limit)
            .expiration_date(DateTime::from(expires))
            .default_instance_name("hybrid-agent-demo")
            .send()
            .await
        {
            Ok(out) => {
                let doc = serde_json::json!({
                    "ActivationId": out.activation_id(),
                    "ActivationCode": out.activation_code(),
                });
                println!("{doc}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "hybrid-devstack: CreateActivation at {endpoint} failed: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                );
                ExitCode::FAILURE
            }
        }
    })
}
