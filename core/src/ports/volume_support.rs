//! Pieces every [`VolumeStore`](super::VolumeStore) implementation needs alike: the
//! per-process guard that keeps two writes or seals of one volume apart, the record a
//! seal writes ([`SealRecord`]), and the millisecond timestamps their metadata files
//! record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::volumes::{VolumeInfo, VolumeState};
use crate::digest::Digest;
use crate::names::VolumeHandle;
use crate::{Error, Result};

/// What every store's seal records about a volume, whatever else its manifest holds.
/// Stores embed it with `#[serde(flatten)]`, so their manifests keep flat keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealRecord {
    /// The store's manifest format.
    pub format: u32,
    /// The volume it seals (a manifest copied to another volume is not its seal).
    pub handle: String,
    /// The tree digest of the content.
    pub digest: Digest,
    /// Bytes of file content.
    pub size: u64,
    /// Regular files.
    pub files: u64,
    /// When the volume was created, where known.
    pub created_at_unix_ms: Option<u64>,
    /// When it was sealed.
    pub sealed_at_unix_ms: u64,
}

impl SealRecord {
    /// The seal of `handle` made now, in manifest format `format`.
    pub fn new(
        format: u32,
        handle: &VolumeHandle,
        digest: Digest,
        size: u64,
        files: u64,
        created_at: Option<SystemTime>,
    ) -> Self {
        SealRecord {
            format,
            handle: handle.as_str().to_owned(),
            digest,
            size,
            files,
            created_at_unix_ms: created_at.map(unix_ms),
            sealed_at_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// Whether this is a seal of `handle` in format `format`.
    pub fn seals(&self, format: u32, handle: &VolumeHandle) -> bool {
        self.format == format && self.handle == handle.as_str()
    }

    /// The sealed volume's info.
    pub fn info(&self, handle: &VolumeHandle) -> VolumeInfo {
        VolumeInfo {
            handle: handle.clone(),
            state: VolumeState::Sealed,
            size: self.size,
            digest: Some(self.digest.clone()),
            created_at: self.created_at_unix_ms.map(from_unix_ms),
        }
    }
}

/// The info of a volume still being created.
pub fn creating_info(handle: &VolumeHandle, created_at: Option<SystemTime>) -> VolumeInfo {
    VolumeInfo {
        handle: handle.clone(),
        state: VolumeState::Creating,
        size: 0,
        digest: None,
        created_at,
    }
}

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
