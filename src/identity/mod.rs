//! Node identity: where the node's AWS credentials come from and how they stay fresh.
//!
//! Two providers, as with nodeadm: SSM hybrid activation ([`register`], [`ssm`],
//! [`ssm_source`]: own RSA-2048 key, stable fingerprint, the private instance API) and IAM Roles
//! Anywhere ([`iam_ra`]: X.509 certificate). Both feed one rotation loop ([`rotation`]) that
//! writes the shared credentials file atomically ([`credfile`]), publishes the credentials to
//! the agent's own SDK clients and reports status. IAM Roles Anywhere nodes also get nodeadm's
//! AWS config file ([`aws_config`]) whose `credential_process` runs
//! [`credential_process`], so kubelet is never tied to the daemon being up.
//!
//! Secrets (activation code, private keys, secret keys, session tokens) are held in
//! [`crate::config::Secret`] or in types whose `Debug` omits them, and never appear in
//! an error or log line.

pub mod atomic;
pub mod aws_config;
pub mod clock;
pub mod credential_process;
pub mod credfile;
pub mod expiry;
pub mod iam_ra;
pub mod keys;
pub mod pem;
pub mod register;
pub mod rotation;
pub mod schedule;
pub mod setup;
pub mod sigv4;
pub mod ssm;
pub mod ssm_source;
pub mod store;

use std::time::SystemTime;

use crate::config::Secret;

/// Temporary AWS credentials from either provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemporaryCredentials {
    /// Not secret on its own (AWS prints access key ids in CloudTrail and error messages).
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// Expiry on the host clock (the service's expiry corrected by the measured clock skew).
    pub expiration: SystemTime,
}
