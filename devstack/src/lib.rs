//! `hybrid-devstack`: the local AWS stand-in that hybrid-agent's demo, tests and benchmarks run
//! against.
//!
//! One HTTP listener on 127.0.0.1 serves every service, told apart the way AWS endpoints would
//! tell them apart if they shared a host: by `X-Amz-Target` (awsJson 1.1: SSM, CloudWatch Logs, ECR),
//! by path (Smithy RPC v2 CBOR for CloudWatch metrics, restJson1 for EKS, `/sessions` for IAM
//! Roles Anywhere), by the `Action` form field (awsQuery: STS, legacy CloudWatch), plus the
//! artifact mirror under `/mirror/` and the control endpoint under `/_devstack/`.
//!
//! The point of the stand-in is to be strict where AWS is strict: signatures are verified
//! (SigV4 for SDK calls, RSA-PSS for the SSM hybrid instance calls), and the CloudWatch limits are
//! enforced at their exact edges, so a client that passes here does not fail on AWS for a reason
//! we could have caught.

pub mod arrivals;
pub mod auth;
pub mod control;
pub mod ecr;
pub mod eks;
pub mod kube;
pub mod logs;
pub mod metrics;
pub mod mirror;
pub mod persist;
pub mod registry;
pub mod rolesanywhere;
pub mod server;
pub mod sigv4;
pub mod ssm;
pub mod state;
pub mod sts;
pub mod tls;
pub mod wire;

pub use server::{Config, Devstack, DevstackError};
