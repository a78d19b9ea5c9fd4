//! Gating of live adapters (a cluster, a database, a bucket) on their environment.
//!
//! A factory that cannot reach its backend calls [`unavailable`] and returns `None`:
//! the suite then says loudly that it did not run, or fails when CI asked for that
//! adapter with `JETBRIDGE_REQUIRE_<ADAPTER>=1`.

/// The environment variable that makes a missing `adapter` a failure.
pub fn require_var(adapter: &str) -> String {
    let name: String = adapter
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("JETBRIDGE_REQUIRE_{name}")
}

/// Whether `JETBRIDGE_REQUIRE_<ADAPTER>` is set to `1` (or `true`).
pub fn require_flag(adapter: &str) -> bool {
    std::env::var(require_var(adapter))
        .map(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "yes"))
        .unwrap_or(false)
}

/// Report that the live `adapter` suite cannot run because of `reason`.
///
/// Prints a loud `SKIPPED` line to stderr; panics instead when
/// `JETBRIDGE_REQUIRE_<ADAPTER>=1`.
pub fn unavailable(adapter: &str, reason: &str) {
    let var = require_var(adapter);
    let upper = var.trim_start_matches("JETBRIDGE_REQUIRE_");
    if require_flag(adapter) {
        panic!("{upper} conformance could not run: {reason}, and {var}=1 requires it");
    }
    // Written to the process's stderr directly, not through `eprintln!`, which the test
    // harness captures and hides for tests that pass: a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {upper} conformance did not run: {reason}. Set {var}=1 to make this a failure."
    );
}
