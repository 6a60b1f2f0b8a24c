//! Credentials the devstack knows and SigV4 verification of SDK calls (being built: until then
//! every signed call is accepted as the admin principal).

use std::path::Path;

use crate::server::DevstackError;
use crate::state::Shared;
use crate::wire::{ApiError, Req};

/// The devstack's fixed admin key pair: what a user's own AWS tooling would sign with. Not a
/// secret — the devstack only listens on 127.0.0.1.
pub const ADMIN_ACCESS_KEY_ID: &str = "AKIADEVSTACKADMIN000";
pub const ADMIN_SECRET_ACCESS_KEY: &str = "devstack-admin-secret-key-not-a-real-secret";

#[derive(Debug, Default)]
pub struct CredentialStore {}

impl CredentialStore {
    pub fn load(_dir: Option<&Path>) -> Result<Self, DevstackError> {
        Ok(Self::default())
    }
}

/// Who made a verified call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub access_key_id: String,
    /// `arn:aws:iam::<account>:user/devstack-admin`, or the assumed-role ARN of an instance.
    pub arn: String,
    pub account_id: String,
    /// User id as GetCallerIdentity reports it.
    pub user_id: String,
}

/// Verifies the SigV4 signature of `req` for `service` (the signing name: `ssm`, `logs`,
/// `monitoring`, `sts`, `eks`) and returns the caller.
pub fn authenticate(state: &Shared, _req: &Req, _service: &str) -> Result<Principal, ApiError> {
    Ok(Principal {
        access_key_id: "AKIDEVSTACKADMIN".into(),
        arn: format!("arn:aws:iam::{}:user/devstack-admin", state.config.account_id),
        account_id: state.config.account_id.clone(),
        user_id: "AIDADEVSTACKADMIN".into(),
    })
}
