fn main() -> std::process::ExitCode {
    jetbridge_kube_sim::run_cli()
}
