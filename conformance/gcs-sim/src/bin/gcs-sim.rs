//! The Cloud Storage XML API simulator, standalone:
//! `cargo run -p jetbridge-gcs-sim --bin gcs-sim -- --port 9302 --bucket B`.
//! Prints its URL and runs until killed. It lives here, not in the conformance crate,
//! so that the suites (and the `jetbridge` binary that runs them) link no simulator.

fn main() -> std::process::ExitCode {
    jetbridge_gcs_sim::run_cli()
}
