//! The `sh` emulator against a real shell.
//!
//! Every conformance suite that runs commands (pods, exec, runtime, lifecycle) runs on
//! the memory fakes with shell recording on. Each `sh -c` run the emulator finished is
//! then replayed under the machine's `/bin/sh`, in a fresh root holding the pod's tree
//! as it was before the run (the host's `/usr` and `/dev` bound in, read-only, in a
//! private mount namespace). Standard output, the exit status and the tree afterwards
//! must be the same. Standard error must agree on being empty or not: its wording
//! differs between real shells too.
//!
//! The replay needs root (a mount namespace and `chroot`), as CI has. Without it the test
//! fails rather than skips.

use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use jetbridge_conformance::{BackendSubject, RuntimeSubject};
use jetbridge_core::images::ImageResolver;
use jetbridge_memory::{FsEntry, MemoryBackend, MemoryRuntime, ShellRun};
use tokio::io::AsyncWriteExt;

const MOCK_TYPE: &str =
    "{name: jb-mock, type: registry-image, source: {repository: concourse/mock-resource}}";

/// Top-level names the replay root takes from the host.
const HOST: &[&str] = &["usr", "dev", "bin", "lib", "lib64", "sbin"];

/// How long one replay may take; the suites' scripts take milliseconds.
const REPLAY_LIMIT: Duration = Duration::from_secs(30);

async fn recorded_runs() -> (Vec<ShellRun>, u64) {
    let backend = MemoryBackend::new();
    let log = backend.record_shell_runs();
    let subject = BackendSubject::new(
        Arc::new(backend.clone()),
        Arc::new(backend.clone()),
        "busybox:1.36",
    );
    jetbridge_conformance::pods::run_all(&subject).await;
    jetbridge_conformance::exec::run_all(&subject).await;

    let fakes = MemoryRuntime::new();
    let runtime_log = fakes.backend.record_shell_runs();
    let subject = RuntimeSubject::new(fakes.runtime(), MOCK_TYPE, ImageResolver::new());
    jetbridge_conformance::runtime::run_all(&subject).await;
    jetbridge_conformance::lifecycle::run_all(&subject).await;

    let mut runs = log.take();
    runs.extend(runtime_log.take());
    (runs, log.left_out() + runtime_log.left_out())
}

/// Build the pod's tree under `root`.
fn materialise(root: &Path, entries: &[FsEntry]) -> std::io::Result<()> {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    for name in HOST {
        if matches!(*name, "usr" | "dev") {
            std::fs::create_dir(root.join(name))?;
        } else {
            symlink(format!("usr/{name}"), root.join(name))?;
        }
    }
    let mut dir_modes = Vec::new();
    for e in entries {
        let at = root.join(e.path().trim_start_matches('/'));
        match e {
            FsEntry::Dir { mode, .. } => {
                std::fs::create_dir_all(&at)?;
                dir_modes.push((at, *mode));
            }
            FsEntry::File { mode, data, .. } => {
                std::fs::write(&at, data)?;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))?;
            }
            FsEntry::Symlink { target, .. } => symlink(target, &at)?,
        }
    }
    // Deepest first, so a read-only parent is set after its children exist.
    for (at, mode) in dir_modes.into_iter().rev() {
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The tree under `root` as entries, leaving out what came from the host.
fn read_back(root: &Path) -> std::io::Result<Vec<FsEntry>> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(root).map_err(std::io::Error::other)?;
        let rel = rel.to_string_lossy();
        if HOST.contains(&rel.split('/').next().unwrap_or("")) {
            continue;
        }
        let path = format!("/{rel}");
        let meta = std::fs::symlink_metadata(e.path())?;
        let mode = meta.permissions().mode() & 0o7777;
        out.push(if meta.file_type().is_symlink() {
            FsEntry::Symlink {
                path,
                target: std::fs::read_link(e.path())?.to_string_lossy().into_owned(),
            }
        } else if meta.is_dir() {
            FsEntry::Dir { path, mode }
        } else {
            FsEntry::File {
                path,
                mode,
                data: std::fs::read(e.path())?,
            }
        });
    }
    out.sort();
    Ok(out)
}

struct Real {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: i32,
    after: Vec<FsEntry>,
}

/// Run `run` under the host's `/bin/sh` in a root holding its tree.
async fn replay(run: &ShellRun) -> Result<Real, String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    materialise(root.path(), &run.before).map_err(|e| format!("building the root: {e}"))?;
    let root_s = root.path().to_string_lossy().into_owned();
    // Bind the host's programs in read-only, then chroot; all in a private mount
    // namespace that ends with the process.
    let setup = r#"set -e
r=$1; shift
umask 022
mount --bind /usr "$r/usr"; mount -o remount,bind,ro "$r/usr"
mount --rbind /dev "$r/dev"
exec chroot "$r" "$@""#;
    let mut cmd = tokio::process::Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        setup,
    ])
    .arg("replay")
    .arg(&root_s)
    .args(["/usr/bin/env", "-i", "-C", &run.cwd]);
    for (k, v) in &run.env {
        cmd.arg(format!("{k}={v}"));
    }
    // The recorded argv names the shell as the pod did (`sh`, `/bin/sh`, `bash`); the
    // machine's `/bin/sh` runs it whatever the name.
    cmd.arg("/bin/sh").args(&run.argv[1..]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("starting unshare: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let data = run.stdin.clone();
    let feed = tokio::spawn(async move {
        // A script that does not read its input closes the pipe early.
        let _ = stdin.write_all(&data).await;
    });
    let out = tokio::time::timeout(REPLAY_LIMIT, child.wait_with_output())
        .await
        .map_err(|_| format!("the replay took more than {REPLAY_LIMIT:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = feed.await;
    let status = out.status.code().unwrap_or(128);
    let after = read_back(root.path()).map_err(|e| format!("reading the root back: {e}"))?;
    Ok(Real {
        stdout: out.stdout,
        stderr: out.stderr,
        status,
        after,
    })
}

fn show(entries: &[FsEntry]) -> BTreeMap<&str, String> {
    entries
        .iter()
        .map(|e| {
            let v = match e {
                FsEntry::Dir { mode, .. } => format!("dir {mode:o}"),
                FsEntry::File { mode, data, .. } => {
                    format!("file {mode:o} {:?}", String::from_utf8_lossy(data))
                }
                FsEntry::Symlink { target, .. } => format!("link -> {target}"),
            };
            (e.path(), v)
        })
        .collect()
}

fn differences(run: &ShellRun, real: &Real) -> Vec<String> {
    let mut d = Vec::new();
    if run.status != real.status {
        d.push(format!(
            "status: emulator {} / sh {}",
            run.status, real.status
        ));
    }
    if run.stdout != real.stdout {
        d.push(format!(
            "stdout: emulator {:?} / sh {:?}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&real.stdout)
        ));
    }
    if run.stderr.is_empty() != real.stderr.is_empty() {
        d.push(format!(
            "stderr: emulator {:?} / sh {:?}",
            String::from_utf8_lossy(&run.stderr),
            String::from_utf8_lossy(&real.stderr)
        ));
    }
    let (ours, theirs) = (show(&run.after), show(&real.after));
    for (path, v) in &ours {
        match theirs.get(path) {
            Some(t) if t == v => {}
            Some(t) => d.push(format!("{path}: emulator {v} / sh {t}")),
            None => d.push(format!("{path}: emulator {v} / sh has none")),
        }
    }
    for (path, t) in &theirs {
        if !ours.contains_key(path) {
            d.push(format!("{path}: emulator has none / sh {t}"));
        }
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulator_agrees_with_a_real_sh_on_every_suite_script() {
    let (runs, left_out) = recorded_runs().await;
    // The suites run 37 scripts to their end today; far fewer means recording broke.
    assert!(
        runs.len() >= 30,
        "only {} sh runs were recorded ({left_out} left out)",
        runs.len()
    );
    let mut failures = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut replayed = 0;
    for run in &runs {
        // The same script on the same tree says nothing new.
        let key = format!("{:?}{:?}{:?}{:?}", run.argv, run.env, run.cwd, run.before);
        if !seen.insert(key) {
            continue;
        }
        replayed += 1;
        match replay(run).await {
            Ok(real) => {
                let d = differences(run, &real);
                if !d.is_empty() {
                    failures.push(format!(
                        "{:?} in {}:\n  {}",
                        run.argv,
                        run.cwd,
                        d.join("\n  ")
                    ));
                }
            }
            Err(e) => failures.push(format!("{:?}: cannot replay: {e}", run.argv)),
        }
    }
    eprintln!(
        "{} sh runs recorded, {replayed} distinct replayed, {left_out} left out (they call programs only the fakes have)",
        runs.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {replayed} scripts differ from /bin/sh:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
