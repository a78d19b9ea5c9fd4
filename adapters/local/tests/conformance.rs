//! The shared Pods and Exec conformance suites against the local backend.

use std::sync::Arc;

use jetbridge_conformance::BackendSubject;
use jetbridge_local::{LocalBackend, LocalConfig};

/// A fresh backend in its own temporary root, removed after the case.
async fn make_backend() -> Option<BackendSubject> {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let backend = Arc::new(
        LocalBackend::new(LocalConfig::new(dir.path().join("root"))).expect("local backend"),
    );
    Some(BackendSubject::new(backend.clone(), backend, "host").with_guard(dir))
}

jetbridge_conformance::pods_suite!(make_backend);
jetbridge_conformance::exec_suite!(make_backend);
