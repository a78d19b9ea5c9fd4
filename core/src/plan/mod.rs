//! Pipelines and task configs: parsing, variables, durations and validation.

pub mod model;

pub use model::*;
