//! The Kubernetes API simulator, standalone:
//! `cargo run -p jetbridge-conformance --bin kube-sim -- --kubeconfig-out FILE`.

fn main() -> std::process::ExitCode {
    jetbridge_kube_sim::run_cli()
}
