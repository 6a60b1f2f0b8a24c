//! EKS DescribeCluster (being built; answers NotImplemented until then).

use std::path::Path;

use crate::server::{Config, DevstackError};
use crate::state::Shared;
use crate::wire::{ApiError, Protocol, Req};

#[derive(Debug, Default)]
pub struct EksState {}

impl EksState {
    pub fn load(_dir: Option<&Path>, _config: &Config) -> Result<Self, DevstackError> {
        Ok(Self::default())
    }
}

pub async fn handle(_state: &Shared, op: &str, _req: &Req) -> axum::response::Response {
    ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, "NotImplemented", format!("devstack: {op} is not built yet")).render(Protocol::RestJson1)
}
