//! Core does no I/O: it must not depend, even transitively, on a network, database,
//! object-store or HTTP crate.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "kube",
    "kube-client",
    "kube-core",
    "k8s-openapi",
    "diesel",
    "diesel-async",
    "object_store",
    "hyper",
    "reqwest",
    "axum",
    "tokio-postgres",
    "sqlx",
];

#[test]
fn core_depends_on_no_io_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "jetbridge-core",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"jetbridge-core"),
        "unexpected cargo tree output: {tree}"
    );
    for bad in FORBIDDEN {
        assert!(
            !names.contains(bad),
            "jetbridge-core depends on {bad}: core must stay free of I/O crates"
        );
    }
}
