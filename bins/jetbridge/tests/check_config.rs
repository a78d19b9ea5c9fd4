//! `jetbridge server --check-config`: the settings a Helm chart renders (flags, variables,
//! a config file) are checked as the server checks them at start, without a database, a
//! cluster, a bucket or a port; exit 0 with a summary, or exit 2 with the server's message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret-pw";
const TOKEN_A: &str = "token-aaaaaaaaaaaaaaaaaaaaaaaa";
const TOKEN_B: &str = "token-bbbbbbbbbbbbbbbbbbbbbbbb";
const VARS_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

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

/// The output of `c`, which must end within a minute: a check that fell through to the
/// real server would serve forever.
fn output(mut c: Command) -> Output {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jetbridge starts");
    let start = Instant::now();
    while child.try_wait().expect("waits").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "still running after 60 s (serving?):\nstdout:\n{}\nstderr:\n{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// What a chart renders: a config file, a token file and a vars key (Secrets mounted as
/// files), and a kubeconfig naming an API server that is not there.
struct Chart {
    dir: tempfile::TempDir,
    config: PathBuf,
    tokens: PathBuf,
    vars_key: PathBuf,
    kubeconfig: PathBuf,
}

impl Chart {
    fn new() -> Chart {
        Self::with_config(&format!(
            "backend: kube\n\
             registry:\n  url: postgres://jetbridge:{PASSWORD}@127.0.0.1:1/ci\n  schema: jetbridge\n\
             volumes:\n  path-or-url: /mnt/artifacts/volumes\n\
             kube:\n  namespace: ci\n  artifact-claim: jetbridge-artifacts\n  node-selector: [pool=ci]\n  tolerations: [\"ci=true:NoSchedule\", \"gpu:NoExecute\"]\n  default-cpu: 500m\n  default-memory: 1Gi\n\
             server:\n  max-builds: 8\n  drain-timeout: 10m\n  lease-ttl: 30s\n"
        ))
    }

    fn with_config(config: &str) -> Chart {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = write(dir.path(), "jetbridge.yml", config);
        let tokens = write(
            dir.path(),
            "tokens",
            &format!("# CI\n{TOKEN_A}\n\n{TOKEN_B}\n"),
        );
        let vars_key = write(dir.path(), "vars-key", &format!("{VARS_KEY}\n"));
        // Any request to it would fail (or hang on retries): the check must send none.
        let kubeconfig = write(
            dir.path(),
            "kubeconfig",
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"https://127.0.0.1:1\"}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\nusers:\n- name: u\n  user: {token: t}\n",
        );
        Chart {
            dir,
            config,
            tokens,
            vars_key,
            kubeconfig,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `jetbridge --config FILE server --check-config ...`, as the Deployment would run
    /// it: the listeners as flags, the Secret-backed files through variables.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = bin();
        c.arg("--config")
            .arg(&self.config)
            .arg("server")
            .arg("--check-config")
            .args(["--listen", "0.0.0.0:8080"])
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("JETBRIDGE_METRICS_LISTEN", "0.0.0.0:9391")
            .env("JETBRIDGE_API_TOKEN_FILE", &self.tokens)
            .env("JETBRIDGE_VARS_KEY_FILE", &self.vars_key)
            .env("JETBRIDGE_KUBECONFIG", &self.kubeconfig)
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn check(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        output(self.command(args, env))
    }
}

/// Exit 0, and the summary line on stdout.
fn passed(out: &Output) -> String {
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.starts_with("config OK: "), "{stdout}");
    no_secrets(out);
    stdout
}

/// Exit 2 and the stderr, which must contain `needle`.
fn refused(out: &Output, needle: &str) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    no_secrets(out);
    stderr
}

fn no_secrets(out: &Output) {
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    for secret in [PASSWORD, TOKEN_A, TOKEN_B, VARS_KEY] {
        assert!(!all.contains(secret), "{secret:?} shown:\n{all}");
    }
}

#[test]
fn a_good_chart_passes_with_a_summary_and_no_secret() {
    let chart = Chart::new();
    // The registry's port is closed and the kubeconfig's API server is not there: a
    // connection attempt would fail the check (or hang in retries).
    let out = chart.check(&[], &[]);
    let stdout = passed(&out);
    assert_eq!(
        stdout.trim_end(),
        "config OK: backend kube (namespace ci), registry postgres (host 127.0.0.1:1, \
         database ci, schema jetbridge, password not shown), volumes /mnt/artifacts/volumes, \
         listen 0.0.0.0:8080, metrics 0.0.0.0:9391, 2 API tokens, vars key set"
    );
    // Nothing written: no data directory.
    assert!(!chart.data_dir().exists(), "the data directory was created");
}

#[test]
fn flags_and_variables_win_over_the_file_as_for_the_server() {
    let chart = Chart::new();
    let volumes = chart.dir.path().join("volumes");
    let out = chart.check(
        &[
            "--registry",
            "memory",
            "--volumes",
            volumes.to_str().expect("utf-8"),
        ],
        &[
            ("JETBRIDGE_BACKEND", "local"),
            ("JETBRIDGE_LISTEN", "ignored"),
        ],
    );
    let stdout = passed(&out);
    // The flag --listen beats its variable; the variable of --backend beats the file.
    assert!(
        stdout.starts_with(&format!(
            "config OK: backend local, registry memory, volumes {}, listen 0.0.0.0:8080",
            volumes.display()
        )),
        "{stdout}"
    );
    assert!(!volumes.exists(), "the volume directory was created");
}

#[test]
fn the_variable_turns_the_check_on_too() {
    let chart = Chart::new();
    let mut c = bin();
    c.arg("server")
        .env("JETBRIDGE_CHECK_CONFIG", "true")
        .env("JETBRIDGE_CONFIG", &chart.config)
        .env("JETBRIDGE_DATA_DIR", chart.data_dir())
        .env("JETBRIDGE_KUBECONFIG", &chart.kubeconfig);
    // The default listeners are loopback: no token is needed.
    let stdout = passed(&output(c));
    assert!(
        stdout.contains("listen 127.0.0.1:8080, metrics 127.0.0.1:9391, no API token"),
        "{stdout}"
    );
    // Like every boolean variable: exactly true or false.
    let mut c = bin();
    c.arg("server").env("JETBRIDGE_CHECK_CONFIG", "yes");
    refused(&output(c), "invalid value 'yes' for '--check-config'");
}

#[test]
fn it_binds_no_port() {
    let chart = Chart::new();
    // Held here: a server that tried to listen on it would fail.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = held.local_addr().expect("addr").to_string();
    let mut c = bin();
    c.args(["server", "--check-config", "--listen", &addr])
        .args(["--metrics-listen", &addr])
        .arg("--config")
        .arg(&chart.config)
        .env("JETBRIDGE_KUBECONFIG", &chart.kubeconfig);
    let stdout = passed(&output(c));
    assert!(
        stdout.contains(&format!("listen {addr}, metrics {addr}")),
        "{stdout}"
    );
}

#[test]
fn a_bucket_is_parsed_not_reached() {
    let chart = Chart::with_config("registry:\n  url: memory\n");
    let out = chart.check(
        &[
            "--volumes",
            "gs://ci-artifacts/jetbridge",
            "--volumes-endpoint",
            "http://127.0.0.1:1",
            "--volumes-allow-http",
            "--volumes-anonymous",
        ],
        &[],
    );
    let stdout = passed(&out);
    assert!(
        stdout.contains("volumes gs://ci-artifacts/jetbridge,"),
        "{stdout}"
    );
    let out = chart.check(&["--volumes", "ftp://host/dir"], &[]);
    refused(&out, "--volumes \"ftp://host/dir\": ");
    refused(&out, "unknown scheme \"ftp\"");
}

#[test]
fn an_unknown_key_names_the_file_line_and_column() {
    let chart =
        Chart::with_config("backend: kube\nkube:\n  namespace: ci\n  nodeselector: [a=b]\n");
    let stderr = refused(
        &chart.check(&[], &[]),
        &format!("error: config file {}:4:3: ", chart.config.display()),
    );
    assert!(stderr.contains("unknown field `nodeselector`"), "{stderr}");
    assert!(stderr.contains("docs/configuration.md"), "{stderr}");
}

#[test]
fn a_missing_token_file_is_named() {
    let chart = Chart::new();
    let missing = chart.dir.path().join("absent-tokens");
    let missing = missing.to_str().expect("utf-8");
    refused(
        &chart.check(&["--api-token-file", missing], &[]),
        &format!("--api-token-file: cannot read {missing}: "),
    );
    // Present, but no token in it; a token too short.
    let empty = write(chart.dir.path(), "empty", "# none yet\n\n");
    refused(
        &chart.check(
            &[],
            &[("JETBRIDGE_API_TOKEN_FILE", empty.to_str().expect("utf-8"))],
        ),
        "the file holds no token",
    );
    let short = write(chart.dir.path(), "short", "abc\n");
    refused(
        &chart.check(
            &[],
            &[("JETBRIDGE_API_TOKEN_FILE", short.to_str().expect("utf-8"))],
        ),
        "a token of 3 characters is too easy to guess",
    );
}

#[test]
fn off_loopback_without_a_token_is_refused() {
    let chart = Chart::new();
    let mut c = chart.command(&[], &[]);
    c.env_remove("JETBRIDGE_API_TOKEN_FILE");
    refused(
        &output(c),
        "--listen 0.0.0.0:8080 is reachable from other machines, and the API has no token: \
         give --api-token-file FILE",
    );
}

#[test]
fn a_registry_url_of_another_scheme_is_refused() {
    let chart = Chart::new();
    let url = format!("mysql://jetbridge:{PASSWORD}@db:3306/ci");
    refused(
        &chart.check(&[], &[("JETBRIDGE_REGISTRY", &url)]),
        "--registry \"mysql://jetbridge:***@db:3306/ci\" is not supported: use `memory` or a postgres:// URL",
    );
    refused(
        &chart.check(&["--registry-schema", "Not-A-Schema"], &[]),
        "cannot use the Postgres registry (check --registry / JETBRIDGE_REGISTRY): ",
    );
}

#[test]
fn bad_kubernetes_settings_are_refused() {
    let chart = Chart::new();
    refused(
        &chart.check(&["--toleration", "gpu"], &[]),
        "--toleration \"gpu\": write KEY[=VALUE]:EFFECT",
    );
    refused(
        &chart.check(&[], &[("JETBRIDGE_NODE_SELECTOR", "pool")]),
        "--node-selector \"pool\": write KEY=VALUE",
    );
    refused(
        &chart.check(&["--default-memory", "lots"], &[]),
        "--default-memory \"lots\": write e.g. 512Mi or 2Gi",
    );
    refused(
        &chart.check(&["--default-cpu", "fast"], &[]),
        "--default-cpu \"fast\": write e.g. 500m or 2",
    );
    refused(
        &chart.check(&["--volumes", "gs://b/p"], &[]),
        "--artifact-claim only goes with a directory on that claim",
    );
}

#[test]
fn bad_server_settings_are_refused() {
    let chart = Chart::new();
    refused(
        &chart.check(&["--metrics-listen", "9391"], &[]),
        "--metrics-listen \"9391\": give an address as IP:PORT",
    );
    refused(
        &chart.check(&[], &[("JETBRIDGE_MAX_BUILDS", "0")]),
        "--max-builds must be at least 1",
    );
    refused(
        &chart.check(&["--lease-ttl", "100ms"], &[]),
        "--lease-ttl must be at least 1s",
    );
    refused(
        &chart.check(&["--worker-ttl", "1s"], &[]),
        "--worker-ttl must be at least 3s",
    );
    refused(
        &chart.check(&["--drain-timeout", "soon"], &[]),
        "invalid value 'soon' for '--drain-timeout",
    );
    let short = write(chart.dir.path(), "short-key", "too short\n");
    refused(
        &chart.check(&["--vars-key-file", short.to_str().expect("utf-8")], &[]),
        "the key must be at least 32 characters",
    );
    refused(
        &chart.check(&["--resource-type-image", "git"], &[]),
        "--resource-type-image \"git\": write TYPE=IMAGE",
    );
}

/// The real start refuses the same settings with the same message, before it binds or
/// connects anything: the check and the start share their code.
#[test]
fn the_server_refuses_what_the_check_refuses() {
    let chart = Chart::new();
    for (args, needle) in [
        (
            &["--toleration", "gpu"][..],
            "--toleration \"gpu\": write KEY[=VALUE]:EFFECT",
        ),
        (
            &["--registry", "sqlite://x"][..],
            "--registry \"sqlite://x\" is not supported",
        ),
    ] {
        let checked = chart.check(args, &[]);
        let mut c = bin();
        c.arg("--config")
            .arg(&chart.config)
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(chart.data_dir())
            .env("JETBRIDGE_KUBECONFIG", &chart.kubeconfig)
            .args(args);
        let started = output(c);
        assert_eq!(
            refused(&checked, needle),
            refused(&started, needle),
            "the check and the start disagree"
        );
    }
}
