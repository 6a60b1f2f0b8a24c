//! hybrid-agent: turns an on-prem or edge Linux machine into an Amazon EKS hybrid node and keeps
//! it healthy.
//!
//! The binary (`src/main.rs`) is a thin shell over this library. [`cli`] parses the command line
//! and runs commands; [`config`] loads and validates every input (agent TOML, nodeadm NodeConfig,
//! flags, endpoint environment) once into a typed [`config::Config`]; [`paths`] resolves every host
//! path beneath `--root`; [`logging`] sets up stderr logging; [`exit`] documents every exit code.
//! The remaining modules are the subsystems of docs/architecture.md "Subsystems" (credentials,
//! install, node rendering, supervision, telemetry, the daemon), each documented in its own module
//! header.

/// The static (musl) release allocates through mimalloc: musl's own allocator serialises threads
/// on one lock and never honours the glibc `MALLOC_*` tunables of the unit. glibc builds keep
/// glibc's malloc. Here in the library so that every musl binary linking it (the agent, the
/// benchmark examples) measures the same allocator. Figures: docs/measurements.md "Allocator".
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod aws;
pub mod cli;
pub mod config;
pub mod cri;
pub mod daemon;
pub mod doctor;
pub mod exit;
pub mod fsutil;
pub mod identity;
pub mod install;
pub mod join;
pub mod kube;
pub mod logging;
pub mod node;
pub mod output;
pub mod paths;
pub mod retry;
pub mod runlock;
pub mod state;
pub mod supervise;
pub mod telemetry;
