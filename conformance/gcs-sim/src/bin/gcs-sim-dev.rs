//! The Cloud Storage XML API simulator, standalone, from its own crate:
//! `cargo run -p jetbridge-gcs-sim --bin gcs-sim-dev -- --bucket B`.

fn main() -> std::process::ExitCode {
    jetbridge_gcs_sim::run_cli()
}
