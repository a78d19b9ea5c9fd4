//! The Cloud Storage XML API simulator, standalone:
//! `cargo run -p jetbridge-conformance --bin gcs-sim -- --port 9302 --bucket B`.
//! Prints its URL and runs until killed.

fn main() -> std::process::ExitCode {
    jetbridge_gcs_sim::run_cli()
}
