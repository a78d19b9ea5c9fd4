//! The Pods and Exec conformance suites against the Kubernetes backend: on a fresh
//! simulator per case, or on a live cluster when `JETBRIDGE_KUBECONFIG` is set.

mod common;

use common::make_backend;

jetbridge_conformance::pods_suite!(make_backend);
jetbridge_conformance::exec_suite!(make_backend);

/// The exec suite again on a server that offers only `v4.channel.k8s.io`, where stdin
/// cannot end without ending the session.
mod v4_only {
    use super::common::make_v4_backend;

    jetbridge_conformance::exec_suite!(make_v4_backend);
}

/// The pods and exec suites with the step-pod helper installed by its init container,
/// as PID 1 and running every command.
mod step_helper {
    use super::common::make_helper_backend;

    jetbridge_conformance::pods_suite!(make_helper_backend);
    jetbridge_conformance::exec_suite!(make_helper_backend);

    mod v4_only {
        use super::super::common::make_helper_v4_backend;

        jetbridge_conformance::exec_suite!(make_helper_v4_backend);
    }
}
