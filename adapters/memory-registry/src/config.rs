//! The registry's one option: the clock it judges time by (as a database server has
//! its own).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The time as the registry sees it: the system clock, or a [`RegistryClock::manual`]
/// one that tests set and advance (to expire a registration, or to run the registry's
/// clock apart from a caller's). Clones share one clock.
#[derive(Debug, Clone, Default)]
pub struct RegistryClock(Option<Arc<Mutex<SystemTime>>>);

impl RegistryClock {
    /// The system clock.
    pub fn system() -> Self {
        RegistryClock(None)
    }

    /// A clock standing at `at` until moved.
    pub fn manual(at: SystemTime) -> Self {
        RegistryClock(Some(Arc::new(Mutex::new(at))))
    }

    /// The current time.
    pub fn now(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Move a manual clock forward by `d` (the system clock moves by itself).
    pub fn advance(&self, d: Duration) {
        if let Some(t) = &self.0 {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            *t += d;
        }
    }
}
