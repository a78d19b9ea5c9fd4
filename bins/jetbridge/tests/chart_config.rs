//! Chart and binary agree: the args, environment and config file the chart's Deployment
//! renders are accepted by this binary (`server --check-config`), for the defaults and
//! every profile, and the `helm test` pod's args parse. A flag renamed in the binary but
//! not in the chart fails here, not in a cluster's CrashLoopBackOff.
//!
//! Files the pod would mount (the ConfigMap, the Secrets) are written under a temporary
//! root and every mount path is rewritten to point there. Secrets the chart does not
//! make (`existingSecret`) get a stand-in of the shape the binary expects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/jetbridge")
}

fn render(files: &[&str], sets: &[&str]) -> Vec<Value> {
    let found = Command::new("helm").arg("version").output();
    assert!(
        found.is_ok(),
        "`helm` is not installed: run .ci/install-tools.sh"
    );
    let chart = chart();
    let mut cmd = Command::new("helm");
    cmd.args(["template", "t"])
        .arg(&chart)
        .args(["--namespace", "ci"]);
    for f in files {
        cmd.arg("-f").arg(chart.join(f));
    }
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).expect("YAML");
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

/// A Secret's value as the pod would see it: the chart's, or a stand-in for one it
/// leaves to the operator.
fn secret_value(docs: &[Value], name: &str, key: &str) -> String {
    if let Some(s) = find(docs, "Secret", name) {
        if let Some(v) = s["stringData"][key].as_str() {
            return v.to_owned();
        }
        panic!("Secret {name} has no key {key}: {s}");
    }
    match key {
        "url" => "postgres://jetbridge:stand-in@db.example:5432/jetbridge".to_owned(),
        "key" => "0123456789abcdef".repeat(4),
        _ => "stand-in-token-0123456789abcdef\n".to_owned(),
    }
}

/// The container's args and environment with every mount made real under `root`.
struct Pod {
    args: Vec<String>,
    env: Vec<(String, String)>,
}

fn materialise(docs: &[Value], pod_spec: &Value, root: &Path) -> Pod {
    let container = &pod_spec["containers"][0];
    let volumes: BTreeMap<&str, &Value> = pod_spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["name"].as_str().expect("volume name"), v))
        .collect();
    // Longest first, so `/a/b` is rewritten before `/a`.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let path = m["mountPath"].as_str().expect("mountPath");
        let local = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&local).expect("mount dir");
        let vol = volumes[m["name"].as_str().expect("mount name")];
        if let Some(cm) = vol.get("configMap") {
            let name = cm["name"].as_str().expect("configMap name");
            let data = &find(docs, "ConfigMap", name).expect("the ConfigMap is rendered")["data"];
            for (k, v) in data.as_object().expect("data") {
                std::fs::write(local.join(k), v.as_str().expect("text")).expect("write");
            }
        } else if let Some(s) = vol.get("secret") {
            let name = s["secretName"].as_str().expect("secretName");
            for item in s["items"].as_array().expect("items") {
                let key = item["key"].as_str().expect("key");
                let file = item["path"].as_str().expect("path");
                std::fs::write(local.join(file), secret_value(docs, name, key)).expect("write");
            }
        }
        mounts.push((path.to_owned(), local));
    }
    mounts.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    // One pass, so a rewritten path (under a temporary root that may itself be in
    // `/tmp`) is never rewritten again.
    let rewrite = |s: &str| {
        let mut out = String::new();
        let mut rest = s;
        'scan: while !rest.is_empty() {
            let at_boundary = out.is_empty() || !out.ends_with(|c: char| c.is_alphanumeric());
            if at_boundary {
                for (from, to) in &mounts {
                    let boundary_after = rest.get(from.len()..).is_some_and(|after| {
                        after.is_empty() || after.starts_with(['/', '"', '\n', ' '])
                    });
                    if rest.starts_with(from.as_str()) && boundary_after {
                        out.push_str(&to.display().to_string());
                        rest = &rest[from.len()..];
                        continue 'scan;
                    }
                }
            }
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
        out
    };
    // The config file names mount paths too.
    for (_, local) in &mounts {
        let file = local.join("jetbridge.yml");
        if file.exists() {
            let text = std::fs::read_to_string(&file).expect("read");
            std::fs::write(&file, rewrite(&text)).expect("write");
        }
    }
    let args = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| rewrite(a.as_str().expect("string arg")))
        .collect();
    let mut env = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            rewrite(v)
        } else if let Some(r) = e["valueFrom"].get("secretKeyRef") {
            secret_value(
                docs,
                r["name"].as_str().expect("name"),
                r["key"].as_str().expect("key"),
            )
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            // As long as a Deployment's pod name can be: 63 characters.
            format!(
                "t-jetbridge-{}-abcde",
                "7".repeat(63 - "t-jetbridge--abcde".len())
            )
        } else {
            panic!("env {name}: a source this test does not model: {e}");
        };
        env.push((name, value));
    }
    Pod { args, env }
}

fn jetbridge(pod: &Pod, extra_env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetbridge"));
    // Only what the pod would have: nothing of this machine's JETBRIDGE_* settings.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .args(&pod.args);
    for (k, v) in &pod.env {
        cmd.env(k, v);
    }
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("jetbridge runs")
}

const PROFILES: &[(&str, &[&str], &[&str])] = &[
    ("defaults", &[], &[]),
    ("kind", &["values-kind.yaml"], &[]),
    ("gke", &["values-gke.yaml"], &[]),
    (
        "gke-gcsfuse",
        &["values-gke.yaml", "values-gke-gcsfuse.yaml"],
        &[],
    ),
    (
        "every setting",
        &[],
        &[
            "artifacts.claim.enabled=true",
            "cache.claim.enabled=true",
            "database.schema=jetbridge",
            "steps.nodeSelector.pool=ci",
            "steps.tolerations={ci=true:NoSchedule}",
            "steps.podAnnotations.team=infra",
            "steps.imagePullSecrets={regcred}",
            "steps.serviceAccountName=steps",
            "steps.helperImage=registry.example/busybox:1.36",
            "steps.allowPrivileged=true",
            "images.registryPrefix=registry.example/mirror/",
            "images.defaultTaskImage=alpine:3.20",
            "images.resourceTypeImages.git=registry.example/git-resource:1",
            "apiTokens.tokens={0123456789abcdef0123,fedcba9876543210fedc}",
            "varsKey.key=0123456789abcdef0123456789abcdef",
            "server.extraArgs={--max-builds=7}",
            "server.otlpEndpoint=http://collector:4317",
        ],
    ),
    (
        "bucket with endpoint",
        &[],
        &[
            "artifacts.bucket.url=s3://ci-artifacts/jb",
            "artifacts.bucket.endpoint=http://minio:9000",
            "artifacts.bucket.allowHttp=true",
            "artifacts.bucket.region=eu-west-1",
        ],
    ),
];

#[test]
fn the_binary_accepts_the_server_the_chart_renders_for_every_profile() {
    for (name, files, sets) in PROFILES {
        let docs = render(files, sets);
        let dep = find(&docs, "Deployment", "t-jetbridge").expect("the Deployment");
        let root = tempfile::tempdir().expect("tempdir");
        let pod = materialise(&docs, &dep["spec"]["template"]["spec"], root.path());
        let out = jetbridge(&pod, &[("JETBRIDGE_CHECK_CONFIG", "true")]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: `jetbridge {}` --check-config refused the chart's server:\n{stdout}{}",
            pod.args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("config OK"), "{name}: {stdout}");
        assert!(
            !stdout.contains("stand-in") && !stdout.contains("0123456789abcdef"),
            "{name}: a secret reached the output: {stdout}"
        );
    }
}

#[test]
fn a_flag_the_binary_does_not_know_is_caught_before_a_pod_runs() {
    // Proves the check above can fail: drift between the chart and the binary.
    let docs = render(&[], &["server.extraArgs={--max-bulids=3}"]);
    let dep = find(&docs, "Deployment", "t-jetbridge").expect("the Deployment");
    let root = tempfile::tempdir().expect("tempdir");
    let pod = materialise(&docs, &dep["spec"]["template"]["spec"], root.path());
    let out = jetbridge(&pod, &[("JETBRIDGE_CHECK_CONFIG", "true")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--max-bulids"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_helm_test_pod_runs_a_command_the_binary_has() {
    for (name, files, sets) in PROFILES {
        let docs = render(files, sets);
        let test_pod = find(&docs, "Pod", "t-jetbridge-conformance").expect("the test pod");
        assert_eq!(
            test_pod["metadata"]["annotations"]["helm.sh/hook"], "test",
            "{name}"
        );
        let root = tempfile::tempdir().expect("tempdir");
        let mut pod = materialise(&docs, &test_pod["spec"], root.path());
        // `--help` after the pod's own args: clap rejects an unknown flag or subcommand
        // before it gets there, and prints help (exit 0) when they all parse.
        pod.args.push("--help".into());
        let out = jetbridge(&pod, &[]);
        assert!(
            out.status.success(),
            "{name}: `jetbridge {}`: {}",
            pod.args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("conformance"),
            "{name}: the test pod runs the conformance suites"
        );
    }
}
