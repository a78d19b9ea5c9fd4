//! Builds whose artifacts are recorded in Postgres (a real server, `DATABASE_URL`, each
//! test in its own schema): the runtime suite, the binary with `--registry`, and a
//! registry outage in the middle of a build.

use std::sync::Arc;
use std::time::Duration;

use jetbridge_conformance::RuntimeSubject;
use jetbridge_conformance::runtime::write_mock_resource;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Vars, parse_pipeline};
use jetbridge_core::ports::{ArtifactRegistry, ArtifactState, Runtime};
use jetbridge_core::services::{
    BuildRequest, BuildRunner, BuildStatus, NoEvents, StepConfig, StepFailure,
};
use jetbridge_fs::FsVolumeStore;
use jetbridge_local::{LocalBackend, LocalConfig};
use jetbridge_postgres::scratch::ScratchSchema;
use jetbridge_postgres::{PgOptions, PgRegistry};

/// The Postgres these tests need: they fail, never skip, without it.
fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need Postgres (run `source .ci/postgres-env.sh` first)"
        )
    })
}

async fn registry(url: &str, app: &str) -> (PgRegistry, ScratchSchema) {
    let schema = ScratchSchema::new(url, "jb_e2e").expect("schema name");
    let reg = PgRegistry::connect(
        url,
        PgOptions {
            schema: Some(schema.name().to_owned()),
            application_name: app.to_owned(),
            pool_size: 4,
            ..PgOptions::default()
        },
    )
    .await
    .expect("registry");
    (reg, schema)
}

async fn local_fs_postgres() -> Option<RuntimeSubject> {
    let url = database_url();
    let dir = tempfile::tempdir().expect("tempdir");
    let (reg, schema) = registry(&url, "jetbridge-e2e").await;
    let backend =
        Arc::new(LocalBackend::new(LocalConfig::new(dir.path().join("local"))).expect("backend"));
    let mock = dir.path().join("mock");
    write_mock_resource(&mock).expect("mock");
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(Arc::new(
            FsVolumeStore::new(dir.path().join("volumes")).expect("store"),
        )),
        registry: Arc::new(reg),
    };
    let mock_type = format!(
        "{{name: jb-mock, type: local, source: {{path: {}}}}}",
        serde_json::to_string(&mock.to_string_lossy()).expect("json")
    );
    // The built-in `mock`, as `run` wires it: links named check, in and out to the
    // binary, which answers the resource protocol under those names.
    let builtin = dir.path().join("builtin-mock");
    std::fs::create_dir_all(&builtin).expect("mkdir");
    for name in ["check", "in", "out"] {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_jetbridge"), builtin.join(name))
            .expect("link");
    }
    let images = ImageResolver::new().with_local_type("mock", builtin.to_string_lossy());
    // The registry (and its pool) is dropped before the schema guard.
    Some(
        RuntimeSubject::new(rt, mock_type, images)
            .with_guard(schema)
            .with_guard(dir),
    )
}

mod local_fs_postgres {
    use super::*;
    jetbridge_conformance::runtime_suite!(local_fs_postgres);
}

/// Every connection of the registry's pool is killed while a step runs: the step ends
/// either successfully with its output registered (the pool reconnected and the write
/// went through) or with a transient registry error — never a success whose output the
/// registry does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_outage_mid_build_is_never_a_silent_success() {
    let url = database_url();
    let app = format!("jb-outage-{}", std::process::id());
    let (reg, _schema) = registry(&url, &app).await;
    let reg = Arc::new(reg);
    let dir = tempfile::tempdir().expect("tempdir");
    let backend =
        Arc::new(LocalBackend::new(LocalConfig::new(dir.path().join("local"))).expect("backend"));
    let rt = Runtime {
        pods: backend.clone(),
        exec: backend,
        volumes: Some(Arc::new(
            FsVolumeStore::new(dir.path().join("volumes")).expect("store"),
        )),
        registry: reg.clone(),
    };
    let runner = BuildRunner::new(
        rt,
        StepConfig::default(),
        ImageResolver::new(),
        "w",
        Arc::new(NoEvents),
    );
    let yaml = "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      outputs: [{name: out}]\n      run: {path: sh, args: [-c, 'sleep 1; echo data > out/f']}\n";
    let pipeline = Arc::new(parse_pipeline(yaml, "outage.yml", &Vars::new()).expect("parses"));
    let build = tokio::spawn(async move {
        runner
            .run(BuildRequest::new(pipeline, "j", 1, "outage"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let killed = std::process::Command::new("psql")
        .arg(&url)
        .args(["-qtA", "-c"])
        .arg(format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .output()
        .expect("psql runs");
    assert!(
        killed.status.success(),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let killed: u32 = String::from_utf8_lossy(&killed.stdout)
        .trim()
        .parse()
        .expect("a count");
    assert!(killed >= 1, "the registry had connections to kill");
    let out = build.await.expect("joins").expect("runs");
    match out.status {
        BuildStatus::Succeeded => {
            let a = out.artifacts.get("out").expect("the output is bound");
            let rec = reg.get(&a.id).await.expect("the output is registered");
            assert_eq!(rec.state, ArtifactState::Ready);
            assert_eq!(rec.digest, a.digest);
        }
        BuildStatus::Errored => match &out.failure {
            Some((_, StepFailure::Infrastructure(e))) => assert!(e.is_retryable(), "{e}"),
            other => panic!("expected a transient registry error, got {other:?}"),
        },
        other => panic!("unexpected status {other:?}: {:?}", out.failure),
    }
}

#[test]
fn jetbridge_run_records_artifacts_in_postgres() {
    let url = database_url();
    let schema = ScratchSchema::new(&url, "jb_cli").expect("schema");
    let data = tempfile::tempdir().expect("tempdir");
    let migrate = std::process::Command::new(env!("CARGO_BIN_EXE_jetbridge"))
        .args([
            "migrate",
            "--registry",
            &url,
            "--registry-schema",
            schema.name(),
        ])
        .output()
        .expect("migrate runs");
    assert_eq!(
        migrate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetbridge"))
        .arg("run")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello.yml"))
        .args([
            "--registry",
            &url,
            "--registry-schema",
            schema.name(),
            "--data-dir",
        ])
        .arg(data.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The build registered its artifacts and the reaper collected them at the end:
    // the tables exist in the schema and hold no artifact.
    let q = std::process::Command::new("psql")
        .arg(&url)
        .args(["-qtA", "-c"])
        .arg(format!("SELECT count(*) FROM {}.artifacts", schema.name()))
        .output()
        .expect("psql");
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    assert_eq!(String::from_utf8_lossy(&q.stdout).trim(), "0");
}
