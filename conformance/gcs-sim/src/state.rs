//! State shared by the server and the control handle.

use crate::store::Store;
use crate::{RequestRecord, SimConfig};
use jetbridge_sim_http::Controls;
use std::sync::{Mutex, MutexGuard};
use tokio_util::sync::CancellationToken;

/// Lock a std mutex, recovering from poisoning (a panicked holder leaves plain
/// data that is still usable for a simulator).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    pub store: Mutex<Store>,
    /// Injected faults and the request log.
    pub controls: Controls<RequestRecord>,
    pub port: u16,
    /// Cancelled at shutdown: ends the listener and every connection.
    pub stop: CancellationToken,
}
