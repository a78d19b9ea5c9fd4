//! The built-in `mock` resource: the binary answering the resource protocol when
//! started as `check`, `in` or `out`; `examples/concourse/mock.yml` run on the local
//! backend; its refusal on Kubernetes without `--mock-image`; and the image and chart
//! that give it one there.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run the binary through a link named `script`, as a backend runs resource scripts.
fn as_script(dir: &Path, script: &str, args: &[&Path], stdin: &str) -> Output {
    let link = dir.join(script);
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_jetbridge"), &link).expect("link");
    }
    let mut child = Command::new(&link)
        .args(args)
        .current_dir(dir)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

#[test]
fn as_env_the_binary_runs_the_command_with_the_assignments() {
    // How the Kubernetes backend execs every step command: `env K=V... PROGRAM ARGS`.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = as_script(
        dir.path(),
        "env",
        &[
            Path::new("JETBRIDGE_EXEC_ID=x1"),
            Path::new("GREETING=a=b"),
            Path::new("sh"),
            Path::new("-c"),
            Path::new("echo \"$JETBRIDGE_EXEC_ID $GREETING $0\"; exit 3"),
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "x1 a=b sh\n");
    let missing = as_script(dir.path(), "env", &[Path::new("/no/such/program")], "");
    assert_eq!(missing.status.code(), Some(127));
    assert!(text(&missing.stderr).contains("/no/such/program"));
}

#[test]
fn the_binary_speaks_the_resource_protocol_under_the_scripts_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = as_script(
        dir.path(),
        "check",
        &[],
        r#"{"source":{"initial_version":"v1"},"version":null}"#,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let versions: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(versions, serde_json::json!([{"version": "v1"}]));

    let dest = dir.path().join("got");
    let out = as_script(
        dir.path(),
        "in",
        &[&dest],
        r#"{"source":{"create_files":{"a/b.txt":"hi"}},"version":{"version":"v1"},"params":{}}"#,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(dest.join("version")).unwrap(),
        "v1\n"
    );
    assert_eq!(std::fs::read_to_string(dest.join("a/b.txt")).unwrap(), "hi");
    assert!(text(&out.stderr).contains("fetching version: v1"));

    let out = as_script(
        dir.path(),
        "out",
        &[Path::new(".")],
        r#"{"source":{},"params":{"file":"got/version"}}"#,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["version"], serde_json::json!({"version": "v1"}));

    // Failing as the real one does: a message on stderr, exit 1, nothing on stdout.
    let out = as_script(
        dir.path(),
        "check",
        &[],
        r#"{"source":{"check_failure":"down"}}"#,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr).contains("intentionally failing to check: down"),
        "{}",
        text(&out.stderr)
    );
}

fn run_example(extra: &[&str]) -> (Output, tempfile::TempDir) {
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_jetbridge"))
        .arg("run")
        .arg(root().join("examples/concourse/mock.yml"))
        .arg("--data-dir")
        .arg(data.path())
        .args(extra)
        .env("JETBRIDGE_COLOR", "never")
        .env_remove("JETBRIDGE_MOCK_IMAGE")
        .env_remove("KUBECONFIG")
        .output()
        .expect("jetbridge runs");
    (out, data)
}

#[test]
fn the_mock_example_runs_on_the_host_with_no_image() {
    let (out, _data) = run_example(&[]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    // The tasks check the files themselves; here, the versions each step saw.
    assert!(
        stdout.contains("[get: config] fetching version: v1"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[get: pinned] fetching version: 2025"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[put: release] pushing version: v1.0.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[get: release] fetching version: v1.0.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[get: release] fetching version: v2"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("image_resource is not honoured"),
        "{stdout}"
    );
}

#[test]
fn kubernetes_without_a_mock_image_is_refused_before_any_step_naming_the_setting() {
    let (out, _data) = run_example(&["--backend", "kube", "--kubeconfig", "/nonexistent"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(text(&out.stdout).is_empty(), "no step ran");
    assert!(
        stderr.contains("mock.yml:9:3: resource `config`")
            && stderr.contains("--mock-image")
            && stderr.contains("images.mock-image")
            && stderr.contains("JETBRIDGE_MOCK_IMAGE")
            && stderr.contains("jetbridge image"),
        "{stderr}"
    );

    // With the setting, the pipeline passes that check and goes on to the cluster.
    let (out, _data) = run_example(&[
        "--backend",
        "kube",
        "--kubeconfig",
        "/nonexistent",
        "--mock-image",
        "ghcr.io/jetbridge/jetbridge:0.1.0",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("--mock-image"), "{stderr}");
}

#[test]
fn the_image_carries_the_mock_scripts_and_the_chart_points_at_it() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(r#"ln -s /usr/local/bin/jetbridge "/out/root/opt/resource/$s""#)
            && dockerfile.contains("for s in check in out")
            && dockerfile.contains("ln -s /usr/local/bin/jetbridge /out/root/usr/bin/env")
            && dockerfile.contains("COPY --from=build /out/root/ /"),
        "the image's /opt/resource/{{check,in,out}} and /usr/bin/env link to the binary"
    );
    if Command::new("helm").arg("version").output().is_err() {
        panic!("`helm` is not installed: run .ci/install-tools.sh");
    }
    let render = |sets: &[&str]| {
        let mut cmd = Command::new("helm");
        cmd.args(["template", "t"])
            .arg(root().join("charts/jetbridge"))
            .args(["--namespace", "ci"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("helm runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let chart: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("charts/jetbridge/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("YAML");
    let own = format!(
        "ghcr.io/jetbridge/jetbridge:{}",
        chart["appVersion"].as_str().expect("appVersion")
    );
    assert!(
        render(&[]).contains(&format!("mock-image: \"{own}\"")),
        "the chart's own image by default"
    );
    let rendered = render(&["images.mockImage=registry.example/jb:2", "image.tag=v9"]);
    assert!(
        rendered.contains("mock-image: \"registry.example/jb:2\""),
        "{rendered}"
    );
}
