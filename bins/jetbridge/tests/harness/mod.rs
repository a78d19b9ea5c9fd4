//! What the tests that run `jetbridge server` as a process share: the binary with a
//! clean environment, a running server (its API and metrics addresses, its further
//! stdout lines, killed when dropped), the Postgres they fail without, and the
//! Kubernetes API simulator they run steps on.
//!
//! Each test binary that declares `mod harness;` compiles all of it, and none uses all
//! of it.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test, with no `JETBRIDGE_*` variable of the caller's and no colour.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_jetbridge"));
    for (k, _) in std::env::vars() {
        if k.starts_with("JETBRIDGE_") {
            c.env_remove(k);
        }
    }
    c.env("NO_COLOR", "1");
    c
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The Postgres these tests need: they fail, never skip, without it.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: these tests need Postgres (run `source .ci/postgres-env.sh` first)"
        )
    })
}

/// The body of a GET of `url` (a server's metrics).
pub async fn scrape(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("the metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// No extra arguments for [`ServerProc::start`].
pub const NO_ARGS: &[&str] = &[];

/// A running `jetbridge server` (stderr inherited), killed when dropped.
pub struct ServerProc {
    pub child: Child,
    pub url: String,
    pub metrics_url: String,
    /// Its stdout lines after the first.
    pub lines: mpsc::Receiver<String>,
}

impl ServerProc {
    /// [`ServerProc::start_within`] 60 s.
    pub fn start<S: AsRef<OsStr>>(data: &Path, extra: &[S]) -> ServerProc {
        ServerProc::start_within(data, extra, Duration::from_secs(60))
    }

    /// Start one on free ports with its data in `data` and `extra` arguments, and wait
    /// (blocking, `within`) for the line saying where it listens.
    pub fn start_within<S: AsRef<OsStr>>(data: &Path, extra: &[S], within: Duration) -> ServerProc {
        let mut child = bin()
            .arg("server")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines
            .recv_timeout(within)
            .expect("the server says where it listens");
        let url = first
            .split("API on ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        let metrics_url = first
            .split("metrics on ")
            .nth(1)
            .unwrap_or_else(|| panic!("no metrics address in {first:?}"))
            .trim()
            .to_owned();
        ServerProc {
            child,
            url,
            metrics_url,
            lines,
        }
    }

    /// The client command `cmd` aimed at this server.
    pub fn client(&self, cmd: &str) -> Command {
        let mut c = bin();
        c.arg(cmd).args(["--server", &self.url]);
        c
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("signal");
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not exit in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Kubernetes API simulator, working in `dir/sim`, and a kubeconfig for namespace
/// `ns` beside it.
pub async fn start_sim(dir: &Path, ns: &str) -> (jetbridge_kube_sim::Simulator, PathBuf) {
    let sim = jetbridge_kube_sim::Simulator::start(jetbridge_kube_sim::SimConfig {
        work_root: Some(dir.join("sim")),
        ..jetbridge_kube_sim::SimConfig::default()
    })
    .await
    .expect("simulator");
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, ns).expect("kubeconfig");
    (sim, kubeconfig)
}

/// Wait (bounded) for a running pod in `ns`; its name.
pub async fn running_pod(sim: &jetbridge_kube_sim::Simulator, ns: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(name) = sim
            .pods(ns)
            .iter()
            .find(|p| p["status"]["phase"].as_str() == Some("Running"))
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        {
            return name;
        }
        assert!(Instant::now() < deadline, "the step pod never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
