//! hushvm driven like Firecracker: its REST API on a Unix socket ([`server`], [`routes`]),
//! its objects ([`types`]), its `--config-file` ([`types::FullVmConfiguration`]), its
//! metrics ([`metrics`]) and logger ([`logger`]).
//!
//! Threads: the API thread serves the socket under the `api` seccomp filter; the main
//! thread builds and runs the machine that InstanceStart (or the config file) asks for;
//! a metrics thread flushes every minute under the same filter.

pub mod instance;
pub mod logger;
pub mod metrics;
pub mod resources;
pub mod routes;
pub mod server;
#[cfg(test)]
mod tests;
pub mod types;

use thiserror::Error;

pub use instance::{Instance, Phase, Starter};
pub use resources::Resources;

/// Why a request was refused: every one answers 400 with `{"fault_message": ...}`.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(String),
    #[error("hushvm does not offer {0}")]
    Unsupported(String),
    #[error("The requested operation is not supported after starting the microVM.")]
    AfterStart,
    #[error("The requested operation is not supported before starting the microVM.")]
    BeforeStart,
    #[error("cannot open the {what} file {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the microVM did not start: {0}")]
    Start(String),
    #[error("the request body is not valid JSON for this call: {0}")]
    Body(#[source] serde_json::Error),
}
