//! Scripted failures: "the next N calls of this operation fail with this error".

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::sync::Mutex;

use jetbridge_core::{Error, ErrorKind};

/// When an injected failure strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTiming {
    /// The call fails without doing anything.
    Before,
    /// The call takes effect, then reports the error: a lost response.
    After,
}

#[derive(Debug)]
struct Planned {
    remaining: usize,
    error: Error,
    timing: FaultTiming,
}

/// A queue of planned failures per operation.
pub(crate) struct Faults<Op> {
    plans: Mutex<HashMap<Op, VecDeque<Planned>>>,
}

impl<Op> Default for Faults<Op> {
    fn default() -> Self {
        Faults {
            plans: Mutex::new(HashMap::new()),
        }
    }
}

impl<Op: fmt::Debug> fmt::Debug for Faults<Op> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.plans.lock().map(|p| p.len()).unwrap_or(0);
        f.debug_struct("Faults").field("planned_ops", &n).finish()
    }
}

/// The fault a call must honour, if any.
pub(crate) struct Strike {
    pub(crate) error: Error,
    pub(crate) timing: FaultTiming,
}

impl<Op: Copy + Eq + Hash + fmt::Debug> Faults<Op> {
    /// Plan `n` failures of `op`, after any already planned.
    pub(crate) fn plan(&self, op: Op, n: usize, error: Error, timing: FaultTiming) {
        if n == 0 {
            return;
        }
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.entry(op).or_default().push_back(Planned {
            remaining: n,
            error,
            timing,
        });
    }

    /// Plan `n` failures of `op` with an error of `kind`.
    pub(crate) fn plan_kind(&self, op: Op, n: usize, kind: ErrorKind, timing: FaultTiming) {
        let error = Error::new(kind, format!("injected fault in {op:?}"));
        self.plan(op, n, error, timing);
    }

    /// Forget every planned failure.
    pub(crate) fn clear(&self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Take the next planned failure of `op`, if any.
    pub(crate) fn take(&self, op: Op) -> Option<Strike> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let queue = plans.get_mut(&op)?;
        let front = queue.front_mut()?;
        front.remaining -= 1;
        let strike = Strike {
            error: front.error.clone(),
            timing: front.timing,
        };
        if front.remaining == 0 {
            queue.pop_front();
        }
        Some(strike)
    }

    /// Fail now if a `Before` fault is planned; return an `After` fault to apply once
    /// the call has taken effect.
    pub(crate) fn before(&self, op: Op) -> Result<Option<Error>, Error> {
        match self.take(op) {
            None => Ok(None),
            Some(Strike {
                error,
                timing: FaultTiming::Before,
            }) => Err(error),
            Some(Strike {
                error,
                timing: FaultTiming::After,
            }) => Ok(Some(error)),
        }
    }
}

/// Apply an `After` fault to a finished call.
pub(crate) fn after<T>(
    after: Option<Error>,
    r: jetbridge_core::Result<T>,
) -> jetbridge_core::Result<T> {
    match after {
        Some(e) => Err(e),
        None => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Op {
        A,
        B,
    }

    #[test]
    fn planned_failures_are_consumed_in_order() {
        let f = Faults::default();
        f.plan_kind(Op::A, 2, ErrorKind::Transient, FaultTiming::Before);
        f.plan_kind(Op::A, 1, ErrorKind::Other, FaultTiming::After);
        assert!(f.take(Op::B).is_none());
        let e = f.before(Op::A).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.is_retryable());
        assert!(f.before(Op::A).is_err());
        let late = f.before(Op::A).unwrap().unwrap();
        assert_eq!(late.kind(), ErrorKind::Other);
        assert!(f.before(Op::A).unwrap().is_none());
    }

    #[test]
    fn clear_forgets_plans() {
        let f = Faults::default();
        f.plan_kind(Op::B, 5, ErrorKind::Lost, FaultTiming::Before);
        f.clear();
        assert!(f.take(Op::B).is_none());
    }
}
