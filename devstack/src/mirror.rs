//! Artifact mirror (being built; answers NotImplemented until then).

use crate::state::Shared;
use crate::wire::{ApiError, Protocol, Req};

pub async fn handle(_state: &Shared, req: &Req) -> axum::response::Response {
    ApiError::new(axum::http::StatusCode::NOT_IMPLEMENTED, "NotImplemented", format!("devstack: mirror {} is not built yet", req.path)).render(Protocol::Plain)
}
