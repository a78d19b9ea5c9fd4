//! `--config FILE` through the binary: a flag beats its variable, which beats the file,
//! which beats the default; a broken or missing file is exit 2 naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jetbridge"));
    // Nothing from the caller's environment may steer the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("JETBRIDGE_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

/// A one-step pipeline that runs on the local backend.
fn pipeline(dir: &Path) -> PathBuf {
    write(
        dir,
        "one.yml",
        "jobs:\n- name: j\n  plan:\n  - task: t\n    config:\n      platform: linux\n      run: {path: sh, args: [-c, 'echo ran']}\n",
    )
}

/// `jetbridge run one.yml --config FILE --data-dir DATA ARGS...`, with `env` set.
fn run(dir: &Path, config: &Path, data: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = bin();
    c.arg("run")
        .arg(pipeline(dir))
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join(data))
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("jetbridge runs")
}

/// Exit 2 and the stderr, which must contain `needle`.
fn refused(out: &Output, needle: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn a_string_setting_file_then_variable_then_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An unsupported registry is refused naming the value that was used.
    let cfg = write(dir.path(), "c.yml", "registry:\n  url: from-file\n");
    refused(
        &run(dir.path(), &cfg, "d1", &[], &[]),
        "--registry \"from-file\" is not supported",
    );
    let env = [("JETBRIDGE_REGISTRY", "from-env")];
    refused(
        &run(dir.path(), &cfg, "d2", &env, &[]),
        "--registry \"from-env\" is not supported",
    );
    refused(
        &run(dir.path(), &cfg, "d3", &env, &["--registry", "from-flag"]),
        "--registry \"from-flag\" is not supported",
    );
}

#[test]
fn a_list_setting_file_then_variable_then_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "c.yml",
        "images:\n  resource-type-images: [git=ok, from-file]\n",
    );
    refused(
        &run(dir.path(), &cfg, "d1", &[], &[]),
        "--resource-type-image \"from-file\": write TYPE=IMAGE",
    );
    // The variable's list replaces the file's: its entries are the ones checked.
    let env = [("JETBRIDGE_RESOURCE_TYPE_IMAGES", "git=ok,from-env")];
    let stderr = refused(
        &run(dir.path(), &cfg, "d2", &env, &[]),
        "--resource-type-image \"from-env\"",
    );
    assert!(!stderr.contains("from-file"), "{stderr}");
    refused(
        &run(
            dir.path(),
            &cfg,
            "d3",
            &env,
            &["--resource-type-image", "from-flag"],
        ),
        "--resource-type-image \"from-flag\"",
    );
    // All of them valid: the run goes through.
    let ok = run(
        dir.path(),
        &cfg,
        "d4",
        &[],
        &["--resource-type-image", "git=mirror/git"],
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
}

fn kept_pods(data: &Path) -> usize {
    std::fs::read_dir(data.join("local/pods"))
        .map(|rd| rd.count())
        .unwrap_or(0)
}

#[test]
fn a_boolean_setting_file_then_variable_then_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "c.yml", "keep-pods: true\n");
    let out = run(dir.path(), &cfg, "d1", &[], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(kept_pods(&dir.path().join("d1")), 1, "the file keeps pods");
    // A variable set to false wins over the file's true.
    let env = [("JETBRIDGE_KEEP_PODS", "false")];
    let out = run(dir.path(), &cfg, "d2", &env, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(kept_pods(&dir.path().join("d2")), 0, "the variable wins");
    // The flag wins over the variable.
    let out = run(dir.path(), &cfg, "d3", &env, &["--keep-pods"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(kept_pods(&dir.path().join("d3")), 1, "the flag wins");
}

#[test]
fn boolean_variables_still_take_exactly_true_or_false() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "c.yml", "# nothing\n");
    for bad in ["yes", "1", "TRUE"] {
        let out = run(dir.path(), &cfg, "d", &[("JETBRIDGE_KEEP_PODS", bad)], &[]);
        refused(&out, &format!("invalid value '{bad}' for '--keep-pods'"));
    }
}

#[test]
fn an_unknown_key_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(
        dir.path(),
        "c.yml",
        "backend: local\nkube:\n  namespace: ci\n  nodeselector: [pool=ci]\n",
    );
    let stderr = refused(
        &run(dir.path(), &cfg, "d", &[], &[]),
        &format!("error: config file {}:4:3: ", cfg.display()),
    );
    assert!(stderr.contains("unknown field `nodeselector`"), "{stderr}");
    assert!(
        stderr.contains("node-selector"),
        "the keys it takes: {stderr}"
    );
    assert!(stderr.contains("docs/configuration.md"), "{stderr}");
    // Nothing ran.
    assert!(!dir.path().join("d").exists(), "{stderr}");
}

#[test]
fn a_value_of_the_wrong_type_names_the_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "c.yml", "worker: w\nkeep-pods: yes\n");
    refused(
        &run(dir.path(), &cfg, "d", &[], &[]),
        &format!("error: config file {}:2:", cfg.display()),
    );
    let cfg = write(dir.path(), "c2.yml", "abort-grace: soon\n");
    refused(
        &run(dir.path(), &cfg, "d", &[], &[]),
        &format!("error: config file {}:1:", cfg.display()),
    );
}

#[test]
fn a_missing_config_file_is_exit_2_naming_it_for_every_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.yml");
    let needle = format!("cannot read the config file {}", missing.display());
    refused(&run(dir.path(), &missing, "d", &[], &[]), &needle);
    // Through the variable too, and for validate.
    let out = bin()
        .arg("validate")
        .arg(pipeline(dir.path()))
        .env("JETBRIDGE_CONFIG", &missing)
        .output()
        .expect("runs");
    refused(&out, &needle);
}

#[test]
fn migrate_takes_the_registry_from_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write(dir.path(), "c.yml", "registry:\n  url: memory\n");
    let out = bin()
        .arg("migrate")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("runs");
    refused(&out, "--registry must be a postgres:// URL");
    // Given nowhere: still a usage error.
    let out = bin().arg("migrate").output().expect("runs");
    refused(&out, "--registry");
}
