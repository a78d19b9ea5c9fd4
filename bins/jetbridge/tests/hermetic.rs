//! `hermetic: true` on the local backend: the job is refused before any step runs
//! (exit 2), with the task's place and what to do; `validate` accepts it.

use std::process::Command;

const PIPELINE: &str = "jobs:\n- name: j\n  plan:\n  - task: first\n    config: {platform: linux, run: {path: 'true'}}\n  - task: sealed\n    hermetic: true\n    config: {platform: linux, run: {path: 'true'}}\n";

#[test]
fn a_hermetic_task_is_refused_on_the_local_backend_before_any_step_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ci.yml");
    std::fs::write(&file, PIPELINE).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_jetbridge"))
        .arg("run")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("JETBRIDGE_COLOR", "never")
        .output()
        .expect("jetbridge runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    for needle in [
        "ci.yml:6:5",
        "task \"sealed\"",
        "hermetic: true",
        "--backend kube",
    ] {
        assert!(stderr.contains(needle), "{needle:?} in {stderr}");
    }
    assert!(!stdout.contains('▶'), "no step ran: {stdout}");

    let validated = Command::new(env!("CARGO_BIN_EXE_jetbridge"))
        .arg("validate")
        .arg(&file)
        .output()
        .expect("jetbridge validates");
    assert_eq!(
        validated.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );
}
