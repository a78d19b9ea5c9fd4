//! # jetbridge-core
//!
//! The domain of jetbridge (build plans, step identities, the failure taxonomy), the
//! four ports adapters implement ([`ports::Pods`], [`ports::Exec`],
//! [`ports::VolumeStore`], [`ports::ArtifactRegistry`]) and the services built only on
//! them (step runner, build runner, artifact service, reaper).
//!
//! This crate does no I/O of its own: no network, database or filesystem client.
//! Everything that touches the world goes through a port. The one exception is
//! [`copy`], the blocking verified tree copy that the local backend and the directory
//! store both call (adapters cannot share code otherwise); core itself never calls it.

#![warn(missing_docs)]

pub mod archive;
pub mod copy;
pub mod digest;
pub mod error;
pub mod images;
pub mod names;
pub mod plan;
pub mod ports;
pub mod services;

pub use error::{Error, ErrorKind, Result};
