//! [`PlanError`]: a problem in a pipeline or task file, with where it is.

use std::fmt;

use super::model::Location;

/// A problem in a pipeline or task file: what is wrong, where, and what to do about it.
///
/// Displays as `file:line:col: message`, followed by `\n  hint: ...` when there is a hint.
/// Messages and hints speak of the plan only, never of one interface's flags or fields:
/// the binary and the server add that from [`PlanError::unfilled`] in their own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PlanError {
    /// Where the problem is.
    pub location: Location,
    /// What is wrong.
    pub message: String,
    /// What to do about it, when that is not obvious from the message.
    pub hint: Option<String>,
    /// The variable that has no value, when that is the problem: the caller knows how
    /// its users give one (`--var` on the command line, a field over HTTP).
    pub unfilled: Option<String>,
}

impl PlanError {
    /// A new error at `location`.
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        PlanError {
            location,
            message: message.into(),
            hint: None,
            unfilled: None,
        }
    }

    /// Say that variable `name` has no value.
    pub fn with_unfilled(mut self, name: impl Into<String>) -> Self {
        self.unfilled = Some(name.into());
        self
    }

    /// Add a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanError {}

impl From<PlanError> for crate::Error {
    fn from(err: PlanError) -> Self {
        crate::Error::new(crate::ErrorKind::Invalid, err.to_string())
    }
}
