//! The Concourse-style pipelines under `examples/concourse/`, each run as a user would
//! (`jetbridge run FILE` on the embedded default) and held to the result its first line
//! declares: `# expect: succeeded`, `failed`, `errored`, or `invalid` (refused before any
//! step runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/concourse")
}

/// `jetbridge run FILE` on the embedded default, in a data directory of its own.
fn run(file: &Path) -> Output {
    let data = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_jetbridge"))
        .arg("run")
        .arg(file)
        .arg("--data-dir")
        .arg(data.path())
        .env("JETBRIDGE_COLOR", "never")
        .output()
        .expect("jetbridge runs")
}

fn expected(text: &str) -> Option<&str> {
    text.lines()
        .next()?
        .strip_prefix("# expect: ")
        .map(str::trim)
}

#[test]
fn every_concourse_example_ends_as_it_declares() {
    let dir = examples();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/concourse")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let want = expected(&text)
            .unwrap_or_else(|| panic!("{}: no `# expect:` first line", file.display()));
        let code = match want {
            "succeeded" => 0,
            "failed" | "errored" => 1,
            // Refused before any step runs, with the place in the file.
            "invalid" => 2,
            other => panic!("{}: unknown expectation {other:?}", file.display()),
        };
        let out = run(&file);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}:\n{stdout}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if want == "invalid" {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            assert!(
                stderr.contains(&format!("{name}:")) && !stdout.contains('▶'),
                "{}: refused with its place, before any step:\n{stdout}{stderr}",
                file.display()
            );
        } else {
            assert!(
                stdout.contains(&format!("build {want}")),
                "{}: the summary says `build {want}`:\n{stdout}",
                file.display()
            );
        }
    }
}

#[test]
fn try_masks_only_its_own_step_and_the_summary_names_the_real_failure() {
    let out = run(&examples().join("try-then-fail.yml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let summary = stdout
        .lines()
        .skip_while(|l| !l.contains("build failed"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(summary.contains("task: unit-tests"), "{stdout}");
    assert!(summary.contains("exited with status 2"), "{stdout}");
}

#[test]
fn load_var_shows_only_revealed_values() {
    let out = run(&examples().join("load_var.yml"));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("local var \"version\" = \"1.4.0\""), "{all}");
    assert!(
        all.contains("deploying registry.example.com/app:1.4.0 with 3 replicas"),
        "{all}"
    );
    assert!(
        !all.contains("s3cr3t-token-value"),
        "an unrevealed value was shown: {all}"
    );
}
