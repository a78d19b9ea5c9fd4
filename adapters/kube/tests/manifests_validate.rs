//! Rendered pod manifests validate against the Kubernetes 1.33 OpenAPI schema, strictly
//! (no unknown fields), offline with `kubernetes-validate` (PyPI; `.ci/install-tools.sh`
//! installs it, and CI sets `JETBRIDGE_REQUIRE_KUBERNETES_VALIDATE=1`).

use std::process::Command;

use jetbridge_core::names::label;
use jetbridge_core::ports::{Mount, MountInfo, MountSource, PodSpec, Resources};
use jetbridge_kube::{KubeConfig, pod_manifest};

fn spec(name: &str) -> PodSpec {
    let mut s = PodSpec::new(name, "busybox:1.36");
    s.labels.insert(label::HANDLE.into(), "0123abcd99".into());
    s.labels.insert(label::STEP.into(), "compile".into());
    s
}

fn pvc(sub: &str) -> MountInfo {
    MountInfo::SharedVolume {
        volume: "artifacts".into(),
        sub_path: sub.into(),
    }
}

fn manifests() -> Vec<(&'static str, serde_json::Value)> {
    let base = KubeConfig {
        namespace: Some("ci".into()),
        ..KubeConfig::default()
    };
    let claim = KubeConfig {
        artifact_claim: Some("artifacts".into()),
        cache_claim: Some("caches".into()),
        ..base.clone()
    };
    let restricted = KubeConfig {
        restricted: true,
        fs_group: Some(1000),
        ..claim.clone()
    };
    let mut annotated = claim.clone();
    annotated
        .pod_annotations
        .insert("gke-gcsfuse/volumes".into(), "true".into());

    let plain = spec("p-j-b1-task-0123abcd");
    let mut mounted = spec("p-j-b1-task-0123abce");
    mounted.mounts = vec![
        Mount::new(
            "repo",
            MountSource::CopyOf(
                jetbridge_core::ports::CopySource::new(
                    pvc("volumes/v-1/data"),
                    jetbridge_core::digest::TreeDigest::new().finish(),
                )
                .with_artifact("repo", "b-1"),
            ),
        ),
        Mount::new("out", MountSource::WriteInto(pvc("volumes/v-2/data"))),
        Mount::new(
            "cache",
            MountSource::Cache {
                key: "p/j/t/cache".into(),
            },
        ),
    ];
    mounted.resources = Resources::new(Some(500), Some(512 << 20));
    let mut streamed = spec("p-j-b1-task-0123abcf");
    streamed.transfer = true;
    streamed.mounts = vec![Mount::new("in", MountSource::Empty)];

    let render = |s: &PodSpec, c: &KubeConfig| {
        serde_json::to_value(pod_manifest(s, c).expect("renders")).expect("serializes")
    };
    vec![
        ("plain", render(&plain, &base)),
        ("mounted", render(&mounted, &claim)),
        ("mounted-restricted", render(&mounted, &restricted)),
        ("streamed-helper", render(&streamed, &base)),
        ("annotated", render(&mounted, &annotated)),
    ]
}

#[test]
fn rendered_pods_validate_against_the_kubernetes_schema() {
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        jetbridge_conformance::live::unavailable(
            "KUBERNETES_VALIDATE",
            "the kubernetes-validate command is not installed (pip install kubernetes-validate)",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (name, pod) in manifests() {
        assert_eq!(pod["kind"], "Pod", "{name}");
        // JSON is YAML: the validator reads it as is.
        let p = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&p, serde_json::to_vec_pretty(&pod).expect("json")).expect("write");
        files.push(p);
    }
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict", "--no-warn"])
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_validator_rejects_an_unknown_field() {
    // Proves the check above can fail: a manifest with a field Kubernetes does not know.
    let found = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        jetbridge_conformance::live::unavailable(
            "KUBERNETES_VALIDATE",
            "kubernetes-validate is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mut pod) = manifests().remove(0);
    pod["spec"]["containers"][0]["bogusField"] = serde_json::json!(1);
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, serde_json::to_vec(&pod).expect("json")).expect("write");
    let out = Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict", "--no-warn"])
        .arg(&p)
        .output()
        .expect("runs");
    assert!(!out.status.success(), "an unknown field was accepted");
}
