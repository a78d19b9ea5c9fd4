//! Pieces every [`VolumeStore`](super::VolumeStore) implementation needs alike: the
//! per-process guard that keeps two writes or seals of one volume apart, and the
//! millisecond timestamps their metadata files record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::names::VolumeHandle;
use crate::{Error, Result};

/// The volumes a write or seal of this process is working on.
#[derive(Debug, Clone, Default)]
pub struct BusyVolumes(Arc<Mutex<HashSet<String>>>);

impl BusyVolumes {
    /// Mark `handle` busy until the guard is dropped; `Conflict` if it already is.
    pub fn claim(&self, handle: &VolumeHandle) -> Result<BusyGuard> {
        let mut busy = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(handle.as_str().to_owned()) {
            return Err(Error::conflict(format!(
                "volume {handle} is being written or sealed by another call"
            )));
        }
        Ok(BusyGuard {
            set: self.0.clone(),
            handle: handle.as_str().to_owned(),
        })
    }
}

/// Keeps a volume busy; dropping it (on every path) frees the volume.
#[derive(Debug)]
pub struct BusyGuard {
    set: Arc<Mutex<HashSet<String>>>,
    handle: String,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.handle);
    }
}

/// Milliseconds since the Unix epoch (0 before it, saturating far after it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn a_volume_is_busy_until_its_guard_drops() {
        let busy = BusyVolumes::default();
        let h = VolumeHandle::random();
        let g = busy.claim(&h).unwrap();
        let clone = busy.clone();
        assert_eq!(clone.claim(&h).unwrap_err().kind(), ErrorKind::Conflict);
        // Another volume is not affected.
        let _other = busy.claim(&VolumeHandle::random()).unwrap();
        drop(g);
        clone.claim(&h).unwrap();
    }

    #[test]
    fn millisecond_stamps_round_trip() {
        let t = from_unix_ms(1_700_000_000_123);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(unix_ms(SystemTime::UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
