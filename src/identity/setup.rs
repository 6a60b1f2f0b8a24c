//! From the validated configuration to running identity machinery: the `identity` phase of
//! `join` and the rotation loop of `run`.
//!
//! `run` is started by systemd with the agent config only, so `join` records what it decided
//! about the node's identity in `identity/provider.json` (provider, region, the IAM Roles
//! Anywhere ARNs and file paths, `enableCredentialsFile`; no secrets). Endpoints, proxy, CA
//! bundle, credentials file and backoff come from the agent config at every start, so changing
//! them needs a restart, not a re-join.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::aws::http::{self, HttpSettings, HttpSetupError};
use crate::config::{AgentConfig, EndpointError, Provider, Region, Service};
use crate::exit::ExitCode;
use crate::identity::TemporaryCredentials;
use crate::identity::atomic::AtomicWriteError;
use crate::identity::aws_config::{self, CredentialProcess};
use crate::identity::clock::{Clock, SkewedClock, SystemClock};
use crate::identity::credfile::CredentialsTarget;
use crate::identity::iam_ra::{DEFAULT_SESSION_DURATION, IamRaError, IamRaSettings, IamRaSource};
use crate::identity::presence::PresenceSettings;
use crate::identity::register::{self, Activation, OnRegistered, RegisterError, RegisterOutcome};
use crate::identity::rotation::{RefreshError, RotationSettings, Rotator, Source};
use crate::identity::schedule::RandomJitter;
use crate::identity::ssm::{SsmClient, SsmError};
use crate::identity::ssm_source::{SsmSource, SsmSourceError};
use crate::identity::store::{IdentityStore, ProviderKind, StoreError};
use crate::paths::HostPaths;

pub const PROVIDER_FILE: &str = "provider.json";
/// Credentials found at start with less life than this are refreshed at once rather than used.
pub const SEED_MIN_REMAINING: Duration = Duration::from_secs(60);

/// What `join` decided, for `run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct ProviderConfig {
    pub provider: ProviderKind,
    pub region: String,
    pub enable_credentials_file: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam_ra: Option<IamRaConfig>,
}

/// IAM Roles Anywhere settings as `join` resolved them (paths already under `--root`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct IamRaConfig {
    pub node_name: String,
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
    pub certificate_path: PathBuf,
    pub private_key_path: PathBuf,
    /// The AWS config file whose profiles run `hybrid-agent credential-process` (resolved under
    /// `--root`); kubelet's kubeconfig names it. Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_config_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Http(#[from] HttpSetupError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("this host has not joined yet ({path} is missing); run `hybrid-agent join` first")]
    NotJoined { path: PathBuf },
    #[error(
        "region `{region}` recorded in {path} is not valid: {reason}; run `hybrid-agent join` again"
    )]
    Region {
        path: PathBuf,
        region: String,
        reason: String,
    },
    #[error(transparent)]
    Ssm(#[from] SsmError),
    #[error(transparent)]
    SsmSource(#[from] SsmSourceError),
    #[error(transparent)]
    IamRa(#[from] IamRaError),
    #[error(
        "cannot write the IAM Roles Anywhere AWS config file (spec.hybrid.iamRolesAnywhere.awsConfigPath): {0}"
    )]
    AwsConfig(#[from] AtomicWriteError),
}

/// Why the identity phase of `join` failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    Register(#[from] RegisterError),
    #[error("cannot fetch or write the first credentials: {source}. {}", first_refresh_next_step(.source, .registered.as_deref()))]
    FirstRefresh {
        source: RefreshError,
        /// The instance id when this run registered it (the undo deregisters it).
        registered: Option<String>,
    },
}

/// What a failed first refresh left behind, in the words the operator needs.
fn first_refresh_next_step(e: &RefreshError, registered: Option<&str>) -> String {
    match (e, registered) {
        (RefreshError::IamRa(_), _) => "Nothing was written to this host".to_owned(),
        (_, Some(id)) => format!(
            "The registration {id} made by this run is undone with the rest of it (deregistered); run `hybrid-agent join` again to retry"
        ),
        (_, None) => {
            "The SSM registration is kept; run `hybrid-agent join` again to retry (it reuses the registration)".to_owned()
        }
    }
}

impl JoinError {
    /// The documented exit code (src/exit.rs) of this failure.
    pub fn exit_code(&self) -> ExitCode {
        use crate::identity::iam_ra::IamRaError;
        match self {
            JoinError::Register(e) => match e {
                RegisterError::ActivationExpired { .. } => ExitCode::ActivationExpired,
                RegisterError::InvalidActivation { .. } => ExitCode::ActivationInvalid,
                RegisterError::RegistrationLimit { .. } => ExitCode::RegistrationLimit,
                RegisterError::Network { .. } => ExitCode::RegistrationNetwork,
                RegisterError::Tls { .. } => ExitCode::RegistrationTls,
                _ => ExitCode::Failure,
            },
            JoinError::FirstRefresh {
                source: RefreshError::IamRa(IamRaError::Network { .. }),
                ..
            }
            | JoinError::FirstRefresh {
                source: RefreshError::Ssm(SsmSourceError::Ssm(SsmError::Network { .. })),
                ..
            } => ExitCode::RegistrationNetwork,
            JoinError::FirstRefresh {
                source: RefreshError::IamRa(IamRaError::Tls { .. }),
                ..
            }
            | JoinError::FirstRefresh {
                source: RefreshError::Ssm(SsmSourceError::Ssm(SsmError::Tls { .. })),
                ..
            } => ExitCode::RegistrationTls,
            _ => ExitCode::Failure,
        }
    }
}

/// The paths and settings every identity operation needs.
#[derive(Debug, Clone)]
pub struct IdentityEnv<'a> {
    pub paths: &'a HostPaths,
    pub agent: &'a AgentConfig,
    pub host_clock: Arc<dyn Clock>,
    /// The agent binary the IAM Roles Anywhere AWS config file runs: the running executable.
    /// On a host installed from the package that is /usr/bin/hybrid-agent, which an upgrade
    /// replaces in place; in a `--root` sandbox it is the binary under test, which a fixed
    /// /usr/bin path would not be.
    pub program: PathBuf,
    /// `--config` given to this command when it is not the default file, so the
    /// credential_process command reads the same agent config.
    pub agent_config_arg: Option<PathBuf>,
    /// The one service clock of this process ([`Self::service_clock`]).
    service_clock: std::sync::OnceLock<Arc<SkewedClock>>,
}

/// Where the package installs the agent: the program named when the running executable's path
/// cannot be read. packaging/README.md.
pub const PACKAGED_PROGRAM: &str = "/usr/bin/hybrid-agent";

impl<'a> IdentityEnv<'a> {
    pub fn new(paths: &'a HostPaths, agent: &'a AgentConfig) -> IdentityEnv<'a> {
        IdentityEnv {
            paths,
            agent,
            host_clock: Arc::new(SystemClock),
            program: std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .unwrap_or_else(|_| PathBuf::from(PACKAGED_PROGRAM)),
            agent_config_arg: None,
            service_clock: std::sync::OnceLock::new(),
        }
    }

    /// The host clock corrected by the skew the services report, shared by every client this
    /// environment builds (rotation, SSM presence, registration), so a skewed host costs one
    /// rejected signature per process, not one per client. Made from `host_clock` on first use.
    pub fn service_clock(&self) -> Arc<SkewedClock> {
        self.service_clock
            .get_or_init(|| Arc::new(SkewedClock::new(self.host_clock.clone())))
            .clone()
    }

    pub fn store(&self) -> IdentityStore {
        IdentityStore::new(&self.paths.state_dir())
    }

    fn http(&self) -> Result<reqwest::Client, SetupError> {
        Ok(http::client(&HttpSettings::from_network(
            &self.agent.network,
        ))?)
    }

    /// The shared credentials file, plus `/eks-hybrid/.aws/credentials` (same profile) with
    /// `enableCredentialsFile`.
    pub fn targets(&self, enable_credentials_file: bool) -> Vec<CredentialsTarget> {
        let profile = self.agent.credentials.profile.clone();
        let mut t = vec![CredentialsTarget {
            path: self.agent.credentials.file.clone(),
            profile: profile.clone(),
        }];
        if enable_credentials_file {
            t.push(CredentialsTarget {
                path: self.paths.eks_hybrid_aws_credentials(),
                profile,
            });
        }
        t
    }

    fn ssm_client(
        &self,
        region: &Region,
        clock: Arc<SkewedClock>,
    ) -> Result<SsmClient, SetupError> {
        let url = self.agent.endpoints.url(Service::Ssm, region)?;
        Ok(SsmClient::new(self.http()?, url, region.as_str(), clock)?)
    }

    fn provider_path(&self) -> PathBuf {
        self.store().dir().join(PROVIDER_FILE)
    }

    pub fn load_provider(&self) -> Result<ProviderConfig, SetupError> {
        let path = self.provider_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SetupError::NotJoined { path });
            }
            Err(source) => return Err(StoreError::Read { path, source }.into()),
        };
        serde_json::from_str(&text).map_err(|e| {
            StoreError::Corrupt {
                path,
                reason: e.to_string(),
            }
            .into()
        })
    }

    fn save_provider(&self, p: &ProviderConfig) -> Result<(), SetupError> {
        let mut text = serde_json::to_string_pretty(p).unwrap_or_default();
        text.push('\n');
        crate::identity::atomic::write_atomic(&self.provider_path(), text.as_bytes(), 0o600)
            .map_err(StoreError::from)?;
        Ok(())
    }

    /// Builds the rotation loop from what `join` recorded.
    pub fn rotator(&self) -> Result<Rotator, SetupError> {
        self.rotator_from(&self.load_provider()?)
    }

    /// The region `join` recorded, parsed; an error names provider.json.
    fn provider_region(&self, provider: &ProviderConfig) -> Result<Region, SetupError> {
        Region::parse(&provider.region).map_err(|reason| SetupError::Region {
            path: self.provider_path(),
            region: provider.region.clone(),
            reason,
        })
    }

    fn rotator_from(&self, provider: &ProviderConfig) -> Result<Rotator, SetupError> {
        let region = self.provider_region(provider)?;
        let clock = self.service_clock();
        let source = match (&provider.provider, &provider.iam_ra) {
            (ProviderKind::IamRa, Some(ira)) => {
                Source::IamRa(Box::new(self.iam_ra_source(&region, ira, clock)?))
            }
            _ => {
                let client = self.ssm_client(&region, clock)?;
                Source::Ssm(Box::new(SsmSource::load(
                    client,
                    self.store(),
                    self.agent.credentials.max_key_age,
                )?))
            }
        };
        let settings = RotationSettings {
            targets: self.targets(provider.enable_credentials_file),
            backoff_cap: self.agent.credentials.refresh_backoff_cap,
            startup_spread: self.agent.daemon.startup_jitter,
        };
        Ok(Rotator::new(
            source,
            settings,
            self.store(),
            self.host_clock.clone(),
            Arc::new(RandomJitter),
        ))
    }

    fn iam_ra_source(
        &self,
        region: &Region,
        ira: &IamRaConfig,
        clock: Arc<SkewedClock>,
    ) -> Result<IamRaSource, SetupError> {
        let settings = IamRaSettings {
            endpoint: self.agent.endpoints.url(Service::Rolesanywhere, region)?,
            region: region.as_str().to_string(),
            trust_anchor_arn: ira.trust_anchor_arn.clone(),
            profile_arn: ira.profile_arn.clone(),
            role_arn: ira.role_arn.clone(),
            certificate_path: ira.certificate_path.clone(),
            private_key_path: ira.private_key_path.clone(),
            session_name: Some(ira.node_name.clone()),
            duration: DEFAULT_SESSION_DURATION,
        };
        Ok(IamRaSource::new(self.http()?, settings, clock)?)
    }

    /// The SSM presence loop's client and settings for `rotator`'s identity
    /// ([`crate::identity::presence`]): the same private SSM client and endpoint as the identity
    /// calls. `None` for IAM Roles Anywhere: those nodes are not SSM managed instances, SSM has
    /// no instance to show online.
    pub fn presence(
        &self,
        provider: &ProviderConfig,
        rotator: &Rotator,
    ) -> Result<Option<(SsmClient, PresenceSettings)>, SetupError> {
        if rotator.source().kind() != ProviderKind::Ssm {
            return Ok(None);
        }
        let instance_id = rotator.source().identity();
        let region = self.provider_region(provider)?;
        let clock = self.service_clock();
        let client = self.ssm_client(&region, clock)?;
        Ok(Some((
            client,
            PresenceSettings {
                instance_id,
                interval: self.agent.daemon.ssm_presence_interval,
                startup_spread: self.agent.daemon.startup_jitter,
            },
        )))
    }

    /// Credentials still valid from a previous run, read back from our own credentials file
    /// (once, at start) when `credentials.json` says they are ours and not about to expire.
    pub fn previous_credentials(
        &self,
        targets: &[CredentialsTarget],
    ) -> Option<(TemporaryCredentials, Option<SystemTime>)> {
        self.credentials_with_life(targets, self.host_clock.now(), SEED_MIN_REMAINING)
    }

    /// The credentials the daemon last wrote (first of `targets`, checked against
    /// `credentials.json`) when they have at least `min_remaining` left at `now`.
    pub fn credentials_with_life(
        &self,
        targets: &[CredentialsTarget],
        now: SystemTime,
        min_remaining: Duration,
    ) -> Option<(TemporaryCredentials, Option<SystemTime>)> {
        let state = self.store().load_credentials_state().ok()??;
        let remaining = state.expiration.duration_since(now).ok()?;
        if remaining < min_remaining {
            return None;
        }
        let values = targets.first()?.read().ok()??;
        if values.access_key_id != state.access_key_id {
            return None;
        }
        Some((
            TemporaryCredentials {
                access_key_id: values.access_key_id,
                secret_access_key: values.secret_access_key,
                session_token: values.session_token?,
                expiration: state.expiration,
            },
            Some(state.last_refresh),
        ))
    }

    /// Role credentials for `instance_id`, fetched with the key on disk (the pending key first:
    /// a run stopped between registering and promoting it has only that one). For undoing a
    /// fresh registration when no credentials were written (the first refresh failed).
    pub async fn instance_credentials(
        &self,
        region: &Region,
        instance_id: &str,
    ) -> Result<TemporaryCredentials, SetupError> {
        let store = self.store();
        let fingerprint = store
            .load_fingerprint()?
            .ok_or_else(|| StoreError::Corrupt {
                path: store.fingerprint_path(),
                reason: "missing".into(),
            })?;
        let clock = self.service_clock();
        let client = self.ssm_client(region, clock)?;
        let mut keys = Vec::new();
        keys.extend(store.load_pending_key()?);
        if store.key_path().exists() {
            keys.push(store.load_key()?);
        }
        let mut last = None;
        for key in keys {
            match client
                .request_role_token(instance_id, &key, &fingerprint)
                .await
            {
                Ok(token) => return Ok(token.credentials),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => e.into(),
            None => StoreError::Corrupt {
                path: store.key_path(),
                reason: "missing".into(),
            }
            .into(),
        })
    }

    /// The identity phase of `join`: register (SSM) or check the certificate (IAM Roles
    /// Anywhere), record the provider for `run`, fetch the first credentials and write them.
    /// `on_registered` hears of a fresh SSM registration as soon as the service accepted it.
    pub async fn join(
        &self,
        provider: &Provider,
        region: &Region,
        enable_credentials_file: bool,
        reregister: bool,
        on_registered: &mut OnRegistered<'_>,
    ) -> Result<JoinOutcome, JoinError> {
        let record = match provider {
            Provider::Ssm {
                activation_id,
                activation_code,
            } => {
                let clock = self.service_clock();
                let client = self.ssm_client(region, clock)?;
                let activation = Activation {
                    id: activation_id.clone(),
                    code: activation_code.clone(),
                };
                let outcome = register::ensure_registered(
                    &client,
                    &self.store(),
                    &activation,
                    reregister,
                    on_registered,
                )
                .await?;
                (
                    ProviderConfig {
                        provider: ProviderKind::Ssm,
                        region: outcome.registration().region.clone(),
                        enable_credentials_file,
                        iam_ra: None,
                    },
                    Some(outcome),
                )
            }
            Provider::IamRolesAnywhere {
                node_name,
                trust_anchor_arn,
                profile_arn,
                role_arn,
                certificate_path,
                private_key_path,
                aws_config_path,
            } => (
                ProviderConfig {
                    provider: ProviderKind::IamRa,
                    region: region.as_str().to_string(),
                    enable_credentials_file,
                    iam_ra: Some(IamRaConfig {
                        node_name: node_name.clone(),
                        trust_anchor_arn: trust_anchor_arn.clone(),
                        profile_arn: profile_arn.clone(),
                        role_arn: role_arn.clone(),
                        certificate_path: certificate_path.clone(),
                        private_key_path: private_key_path.clone(),
                        aws_config_path: Some(aws_config_file(self.paths, aws_config_path)),
                    }),
                },
                None,
            ),
        };
        let (record, registration) = record;
        // For IAM Roles Anywhere this first CreateSession is also the proof that certificate,
        // key and ARNs work: nothing is written before it succeeds.
        let mut rotator = self.rotator_from(&record)?;
        let mut attempt = 1;
        let creds = loop {
            match rotator.refresh_once().await {
                Ok(c) => break c,
                // Transient (network, 5xx, throttling): a few jittered retries, as registration.
                Err(e) if e.is_transient() && attempt < register::REGISTER_ATTEMPTS => {
                    let delay = register::register_retry_delay(attempt - 1, &RandomJitter);
                    tracing::warn!(
                        attempt,
                        "first credential fetch failed, retrying in {} ms: {e}",
                        delay.as_millis()
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(source) => {
                    return Err(JoinError::FirstRefresh {
                        source,
                        registered: match &registration {
                            Some(RegisterOutcome::Registered(r)) => Some(r.instance_id.clone()),
                            _ => None,
                        },
                    });
                }
            }
        };
        self.save_provider(&record)?;
        let files: Vec<PathBuf> = self
            .targets(record.enable_credentials_file)
            .into_iter()
            .map(|t| t.path)
            .collect();
        let aws_config = self.write_aws_config(&record)?;
        Ok(JoinOutcome {
            provider: record.provider,
            identity: rotator.source().identity(),
            registration,
            expiration: creds.expiration,
            files,
            aws_config,
        })
    }

    /// The `credential_process` command for an IAM Roles Anywhere record.
    pub fn credential_process(&self, record: &ProviderConfig) -> Option<CredentialProcess> {
        let ira = record.iam_ra.as_ref()?;
        let root = self.paths.root();
        let endpoint = self
            .agent
            .endpoints
            .endpoint(Service::Rolesanywhere)
            .and_then(|_| Region::parse(&record.region).ok())
            .and_then(|r| self.agent.endpoints.url(Service::Rolesanywhere, &r).ok())
            .map(|u| u.to_string());
        Some(CredentialProcess {
            program: self.program.clone(),
            root: (root != std::path::Path::new("/")).then(|| root.to_path_buf()),
            agent_config: self.agent_config_arg.clone(),
            certificate_path: ira.certificate_path.clone(),
            private_key_path: ira.private_key_path.clone(),
            trust_anchor_arn: ira.trust_anchor_arn.clone(),
            profile_arn: ira.profile_arn.clone(),
            role_arn: ira.role_arn.clone(),
            session_name: ira.node_name.clone(),
            region: record.region.clone(),
            endpoint,
        })
    }

    /// Writes the AWS config file of an IAM Roles Anywhere record; returns its path.
    fn write_aws_config(&self, record: &ProviderConfig) -> Result<Option<PathBuf>, SetupError> {
        let (Some(cp), Some(path)) = (
            self.credential_process(record),
            record
                .iam_ra
                .as_ref()
                .and_then(|i| i.aws_config_path.clone()),
        ) else {
            return Ok(None);
        };
        aws_config::write(&path, &cp)?;
        Ok(Some(path))
    }

    /// The AWS config file `join` wrote for this node (IAM Roles Anywhere), from its record.
    pub fn recorded_aws_config_file(&self) -> Option<PathBuf> {
        self.load_provider().ok()?.iam_ra?.aws_config_path
    }
}

/// Where the AWS config file of an IAM Roles Anywhere node goes (resolved under `--root`):
/// `awsConfigPath` as validated, else nodeadm's default.
pub fn aws_config_file(paths: &HostPaths, configured: &Option<PathBuf>) -> PathBuf {
    configured
        .clone()
        .unwrap_or_else(|| paths.resolve(aws_config::DEFAULT_AWS_CONFIG_PATH))
}

/// The AWS config file kubelet's authenticator reads on a node with this provider (None: SSM).
pub fn provider_aws_config_file(paths: &HostPaths, provider: &Provider) -> Option<PathBuf> {
    match provider {
        Provider::IamRolesAnywhere {
            aws_config_path, ..
        } => Some(aws_config_file(paths, aws_config_path)),
        Provider::Ssm { .. } => None,
    }
}

/// What the identity phase did, for `join`'s output.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub provider: ProviderKind,
    pub identity: String,
    pub registration: Option<RegisterOutcome>,
    pub expiration: SystemTime,
    pub files: Vec<PathBuf>,
    /// The IAM Roles Anywhere AWS config file written.
    pub aws_config: Option<PathBuf>,
}
