//! The jetbridge server: an HTTP API over a [`BuildQueue`](jetbridge_core::ports::BuildQueue),
//! whose builds a replica claims and runs in its
//! [`WorkerSession`](jetbridge_core::services::WorkerSession).
//!
//! [`Server::start`] starts the claim and lapse-reaping loops; [`Server::router`] is
//! the API, [`Server::metrics_router`] the Prometheus endpoint; [`Server::drain`] ends
//! the replica in order. The binary decides the listeners, auth tokens and signals.

pub mod api;
mod http;
pub mod metrics;
mod pipelines;
pub mod secret;
pub mod spec;
pub mod sse;
mod worker;

pub use http::ApiError;
pub use worker::{ABORT_REASON, SHUTDOWN_REASON, Server, ServerConfig, WORKER_LOST_REASON};
