//! The Pods and Exec conformance suites against the Kubernetes backend: on a fresh
//! simulator per case, or on a live cluster when `JETBRIDGE_KUBECONFIG` is set.

mod common;

use common::make_backend;

jetbridge_conformance::pods_suite!(make_backend);
jetbridge_conformance::exec_suite!(make_backend);
