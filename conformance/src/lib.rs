//! # jetbridge-conformance
//!
//! The conformance suites: one per port ([`pods`], [`exec`], [`volumes`],
//! [`registry`], [`queue`]), each a set of plain async case functions over `&dyn Port`, and one
//! registration macro per suite that turns every case into its own named test in an
//! adapter's test crate:
//!
//! ```no_run
//! use std::sync::Arc;
//! use jetbridge_core::ports::{ArtifactRegistry, VolumeStore};
//! use jetbridge_conformance::{BackendSubject, Subject, live};
//!
//! async fn make_store() -> Option<Subject<dyn VolumeStore>> {
//!     // A real factory builds its store here, e.g. in a temporary directory kept
//!     // alive with `.with_guard(dir)`.
//!     live::unavailable("EXAMPLE", "this example has no store");
//!     None
//! }
//! async fn make_registry() -> Option<Subject<dyn ArtifactRegistry>> {
//!     live::unavailable("EXAMPLE", "DATABASE_URL is not set");
//!     None
//! }
//! async fn make_backend() -> Option<BackendSubject> {
//!     live::unavailable("EXAMPLE", "no cluster");
//!     None
//! }
//!
//! jetbridge_conformance::volume_store_suite!(make_store);
//! jetbridge_conformance::registry_suite!(make_registry);
//! jetbridge_conformance::pods_suite!(make_backend);
//! jetbridge_conformance::exec_suite!(make_backend);
//! # fn main() {}
//! ```
//!
//! Cases check what a port's doc comments promise, assert on
//! [`ErrorKind`](jetbridge_core::ErrorKind)s (never message text), skip themselves when
//! a capability they need is off, and check that calls a capability rules out fail with
//! `Unsupported`. Every suite also has `CASES` (the case names) and `run_all` (run
//! every case against one subject and report), used by `jetbridge conformance` against
//! live backends. See the README for the model.

pub mod exec;
pub mod lifecycle;
pub mod live;
mod macros;
pub mod pods;
pub mod queue;
pub mod registry;
pub mod runtime;
pub mod subject;
pub mod support;
pub mod volumes;

pub use runtime::RuntimeSubject;
pub use subject::{BackendSubject, Subject};
pub use support::{CaseError, CaseOutcome, CaseResult, Status};
pub use volumes::hostile;

/// Names of the [`pods`] cases.
pub const PODS_CASES: &[&str] = pods::CASES;
/// Names of the [`exec`] cases.
pub const EXEC_CASES: &[&str] = exec::CASES;
/// Names of the [`volumes`] cases.
pub const VOLUME_STORE_CASES: &[&str] = volumes::CASES;
/// Names of the [`registry`] cases.
pub const REGISTRY_CASES: &[&str] = registry::CASES;
/// Names of the [`queue`] cases.
pub const QUEUE_CASES: &[&str] = queue::CASES;
/// The runtime suite's cases.
pub const RUNTIME_CASES: &[&str] = runtime::CASES;
/// The lifecycle suite's cases.
pub const LIFECYCLE_CASES: &[&str] = lifecycle::CASES;

/// What the macros need from this crate's dependencies, reachable as `$crate::__private`.
#[doc(hidden)]
pub mod __private {
    pub use jetbridge_core::Error;
}
