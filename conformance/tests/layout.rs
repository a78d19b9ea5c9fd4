//! The shape of the adapter crates: one layout for all, READMEs that list the files
//! they describe, and adapters that depend on core only (never on each other), so that
//! an operator links exactly the adapters they choose.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Files every adapter crate has, each with the same meaning.
const LAYOUT: &[&str] = &[
    "README.md",
    "src/lib.rs",
    "src/config.rs",
    "src/error.rs",
    "tests/conformance.rs",
];

/// Headings every adapter README has (others may come between them).
const HEADINGS: &[&str] = &[
    "## Configuration",
    "## Error mapping",
    "## Files",
    "## Tests",
];

/// Crates under `adapters/` that are test fakes, not adapters an operator deploys:
/// they keep the README and the conformance run, not the config/error split.
const FAKES: &[&str] = &["memory"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the conformance crate sits in the workspace")
        .to_path_buf()
}

/// Every crate directory under `adapters/`, by name.
fn adapters() -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(workspace().join("adapters"))
        .expect("adapters/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, p)
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "found too few adapters: {out:?}");
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_adapter_has_the_same_layout() {
    let mut missing = Vec::new();
    for (name, dir) in adapters() {
        let fake = FAKES.contains(&name.as_str());
        for f in LAYOUT {
            let optional = fake && f.starts_with("src/") && *f != "src/lib.rs";
            if !optional && !dir.join(f).is_file() {
                missing.push(format!("adapters/{name}/{f}"));
            }
        }
        if fake {
            continue;
        }
        let readme = read(&dir.join("README.md"));
        for h in HEADINGS {
            if !readme.lines().any(|l| l.trim_end() == *h) {
                missing.push(format!("adapters/{name}/README.md: heading {h:?}"));
            }
        }
    }
    assert!(missing.is_empty(), "missing: {missing:#?}");
}

/// The README's "## Files" table names every source file, and nothing else.
#[test]
fn every_adapter_readme_lists_its_files() {
    let mut wrong = Vec::new();
    for (name, dir) in adapters() {
        if FAKES.contains(&name.as_str()) {
            continue;
        }
        let on_disk: BTreeSet<String> = std::fs::read_dir(dir.join("src"))
            .expect("src/")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|f| f.ends_with(".rs"))
            .collect();
        let readme = read(&dir.join("README.md"));
        let section = readme
            .split("\n## Files\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        let listed: BTreeSet<String> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split('`').next())
            .map(str::to_owned)
            .collect();
        if on_disk != listed {
            wrong.push(format!(
                "adapters/{name}: on disk but not listed {:?}; listed but not on disk {:?}",
                on_disk.difference(&listed).collect::<Vec<_>>(),
                listed.difference(&on_disk).collect::<Vec<_>>()
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The `jetbridge-*` crates a manifest's `[dependencies]` table names (dev-dependencies
/// may name the conformance crate and fakes: tests may use them).
fn jetbridge_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps
            && let Some(name) = line
                .split(['=', '.', ' '])
                .next()
                .filter(|n| n.starts_with("jetbridge-"))
        {
            out.push(name.to_owned());
        }
    }
    out
}

#[test]
fn adapters_depend_on_core_only() {
    let mut wrong = Vec::new();
    for (name, dir) in adapters() {
        let deps = jetbridge_dependencies(&read(&dir.join("Cargo.toml")));
        // The fakes add scriptable faults on top of the production in-memory registry
        // rather than keep a second copy of it.
        let allowed: &[&str] = if FAKES.contains(&name.as_str()) {
            &["jetbridge-core", "jetbridge-memory-registry"]
        } else {
            &["jetbridge-core"]
        };
        for d in deps.iter().filter(|d| !allowed.contains(&d.as_str())) {
            wrong.push(format!("adapters/{name} depends on {d}"));
        }
        if !deps.iter().any(|d| d == "jetbridge-core") {
            wrong.push(format!("adapters/{name} does not depend on jetbridge-core"));
        }
    }
    let core = jetbridge_dependencies(&read(&workspace().join("core/Cargo.toml")));
    if !core.is_empty() {
        wrong.push(format!("core depends on {core:?}"));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_dependency_reader_sees_what_it_must() {
    let manifest = "[package]\nname = \"x\"\n\n[dependencies]\njetbridge-core.workspace = true\njetbridge-fs = { path = \"../fs\" }\ntokio = \"1\"\n\n[dev-dependencies]\njetbridge-conformance.workspace = true\n";
    assert_eq!(
        jetbridge_dependencies(manifest),
        vec!["jetbridge-core".to_owned(), "jetbridge-fs".to_owned()]
    );
}

/// What operators deploy links no simulator and no fake: the suites and the binary
/// that runs them against a live cluster depend on the simulators and on
/// `jetbridge-memory` (the fakes with scriptable faults) for tests only.
#[test]
fn the_deployed_binary_links_no_simulator_and_no_fake() {
    let mut wrong = Vec::new();
    for manifest in ["bins/jetbridge/Cargo.toml", "conformance/Cargo.toml"] {
        for d in jetbridge_dependencies(&read(&workspace().join(manifest))) {
            if d.ends_with("-sim") || d.starts_with("jetbridge-sim-") || d == "jetbridge-memory" {
                wrong.push(format!("{manifest} depends on {d}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
