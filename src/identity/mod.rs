//! Node identity: where the node's AWS credentials come from and how they stay fresh.
//!
//! Two providers, as with nodeadm: SSM hybrid activation ([`register`], [`ssm`],
//! [`ssm_source`]: own RSA-2048 key, stable fingerprint, the private instance API) and IAM Roles
//! Anywhere ([`iam_ra`]: X.509 certificate). Both feed one rotation loop ([`rotation`]) that
//! writes the shared credentials file atomically ([`credfile`]), publishes the credentials to
//! the agent's own SDK clients and reports status. IAM Roles Anywhere nodes also get nodeadm's
//! AWS config file ([`aws_config`]) whose `credential_process` runs
//! [`credential_process`], so kubelet is never tied to the daemon being up. An SSM node also
//! pings SSM ([`presence`]: UpdateInstanceInformation, as amazon-ssm-agent does) so SSM lists
//! it Online.
//!
//! Secrets (activation code, private keys, secret keys, session tokens) are held in
//! [`crate::config::Secret`] or in types whose `Debug` omits them, and never appear in
//! an error or log line.

pub mod atomic;
pub mod aws_config;
pub mod credential_process;
pub mod credfile;
pub mod expiry;
pub mod iam_ra;
pub mod keys;
pub mod pem;
pub mod presence;
pub mod register;
pub mod rotation;
pub mod schedule;
pub mod setup;
pub mod ssm;
pub mod ssm_source;
pub mod store;

// AWS transport, kept reachable under their old paths: the identity providers sign with them.
pub use crate::aws::credentials::TemporaryCredentials;
pub use crate::aws::{clock, sigv4};
