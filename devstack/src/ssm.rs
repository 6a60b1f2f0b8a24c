//! SSM: activations, hybrid registration, RSA-signed instance calls (being built; answers NotImplemented until then).

use std::path::Path;

use crate::server::DevstackError;
use crate::state::Shared;
use crate::wire::{ApiError, Req};

#[derive(Debug, Default)]
pub struct SsmState {}

impl SsmState {
    pub fn load(_dir: Option<&Path>) -> Result<Self, DevstackError> {
        Ok(Self::default())
    }
}

pub async fn handle(_state: &Shared, op: &str, _req: &Req) -> axum::response::Response {
    ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, "NotImplemented", format!("devstack: {op} is not built yet"))
        .render(crate::wire::Protocol::AwsJson11)
}
