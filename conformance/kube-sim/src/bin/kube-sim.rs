//! The Kubernetes API simulator, standalone:
//! `cargo run -p jetbridge-kube-sim --bin kube-sim -- --kubeconfig-out FILE`.
//! It lives here, not in the conformance crate, so that the suites (and the
//! `jetbridge` binary that runs them) link no simulator.

fn main() -> std::process::ExitCode {
    jetbridge_kube_sim::run_cli()
}
