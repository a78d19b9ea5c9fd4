//! Volume mounts: a container's processes see each volume at its mount path as a real
//! directory (a bind mount in a mount namespace of their own), so tools that do not
//! follow symbolic links (`find`) see every file, as on a cluster.
//!
//! The bind mounts need root; without it the simulator falls back to symbolic links and
//! these tests say so and return, except where `JETBRIDGE_REQUIRE_MOUNT` is set (CI, which
//! runs them as root), where that is a failure.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, LogParams};
use serde_json::json;
use std::path::{Path, PathBuf};
use tokio::io::AsyncReadExt;

async fn read_all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        r.read_to_string(&mut s).await.unwrap();
    }
    s
}

fn as_root() -> bool {
    // The effective uid: the second field of `Uid:` in /proc/self/status (proc(5)).
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0");
    // CI requires the real mounts (`JETBRIDGE_REQUIRE_MOUNT=1`, set by `.ci/test.sh`):
    // there a missing root is a failure, never a pass.
    assert!(
        root || std::env::var_os("JETBRIDGE_REQUIRE_MOUNT").is_none(),
        "JETBRIDGE_REQUIRE_MOUNT is set but the tests do not run as root: the simulator's \
         mounts would be symbolic links"
    );
    if !root {
        eprintln!("not root: the simulator's mounts are symbolic links here; not run");
    }
    root
}

/// Run `script` with `sh -c` in container `main` of pod `name`: (succeeded, stdout,
/// stderr).
async fn sh(pods: &kube::Api<Pod>, name: &str, script: &str) -> (bool, String, String) {
    let ap = AttachParams::default().stdout(true).stderr(true);
    let mut proc = pods.exec(name, ["sh", "-c", script], &ap).await.unwrap();
    let status = proc.take_status().unwrap();
    let (out, err) = tokio::join!(read_all(proc.stdout()), read_all(proc.stderr()));
    let ok = status.await.unwrap().status.as_deref() == Some("Success");
    (ok, out, err)
}

/// A PVC `data` holding `top.txt` and `x/y/z.txt`, under `pvc_root`.
fn fill_claim(pvc_root: &Path) -> PathBuf {
    let data = pvc_root.join("data");
    std::fs::create_dir_all(data.join("x/y")).unwrap();
    std::fs::write(data.join("top.txt"), "top\n").unwrap();
    std::fs::write(data.join("x/y/z.txt"), "deep\n").unwrap();
    data
}

/// Container `main` works in an `emptyDir` at `/work`; the claim `data` is mounted
/// below it at `/work/tree`, its `x` read-only at `/ro`, and its file `top.txt` at
/// `/work/one.txt`.
fn mounted(name: &str, command: &[&str]) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
            ],
            "containers": [{
                "name": "main", "image": "busybox", "command": command,
                "workingDir": "/work",
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/work"},
                    {"name": "data", "mountPath": "/work/tree"},
                    {"name": "data", "mountPath": "/ro", "subPath": "x", "readOnly": true},
                    {"name": "data", "mountPath": "/work/one.txt", "subPath": "top.txt"},
                ],
            }],
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sees_every_file_of_a_mount_through_real_directories() {
    if !as_root() {
        return;
    }
    let (sim, client) = start().await;
    let data = fill_claim(sim.pvc_root());
    let pods = api(&client);
    create(&pods, &mounted("m", &["/jetbridge/pause"])).await;
    wait_phase(&pods, "m", "Running").await;

    // `find` does not follow a link given on its command line: it sees the files only
    // when the mount point is a directory with them in it.
    let (ok, out, err) = sh(&pods, "m", "find tree -type f | sort").await;
    assert!(ok, "stderr: {err}");
    assert_eq!(out, "tree/top.txt\ntree/x/y/z.txt\n");
    let (ok, out, err) = sh(&pods, "m", "ls -R tree").await;
    assert!(ok, "stderr: {err}");
    assert!(
        out.contains("tree:\ntop.txt\nx\n") && out.contains("tree/x/y:\nz.txt\n"),
        "{out}"
    );
    // The file mounted on a file, inside the working directory's mount.
    let (ok, out, err) = sh(
        &pods,
        "m",
        "cat one.txt; test -f one.txt && test ! -L one.txt",
    )
    .await;
    assert!(ok, "stderr: {err}");
    assert_eq!(out, "top\n");

    // On the host the mount points are plain, empty directories; what the container
    // writes through them lands in the volumes.
    let (ok, out, err) = sh(
        &pods,
        "m",
        "echo new > tree/new.txt && echo here > made-here && echo $JETBRIDGE_SIM_ROOT",
    )
    .await;
    assert!(ok, "stderr: {err}");
    let root = PathBuf::from(out.trim());
    for point in ["work", "work/tree", "ro"] {
        let md = std::fs::symlink_metadata(root.join(point)).unwrap();
        assert!(md.is_dir() && !md.is_symlink(), "{point}: {md:?}");
    }
    assert!(!root.join("work/made-here").exists());
    assert!(!root.join("work/tree/new.txt").exists());
    assert_eq!(
        std::fs::read_to_string(data.join("new.txt")).unwrap(),
        "new\n"
    );
    let scratch = root.join("../../volumes/scratch");
    assert_eq!(
        std::fs::read_to_string(scratch.join("made-here")).unwrap(),
        "here\n"
    );

    // A read-only mount refuses writes, root's too (EROFS), and reads as usual.
    let (ok, _, err) = sh(&pods, "m", "echo no > \"$JETBRIDGE_SIM_ROOT/ro/f\"").await;
    assert!(!ok, "a write to a read-only mount succeeded");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!data.join("x/f").exists());
    let (ok, out, err) = sh(&pods, "m", "cat \"$JETBRIDGE_SIM_ROOT/ro/y/z.txt\"").await;
    assert!(ok, "stderr: {err}");
    assert_eq!(out, "deep\n");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_s_own_process_runs_with_its_mounts() {
    if !as_root() {
        return;
    }
    let (sim, client) = start().await;
    fill_claim(sim.pvc_root());
    let pods = api(&client);
    let script = "find tree -type f | sort; pwd";
    create(&pods, &mounted("own", &["sh", "-c", script])).await;
    wait_phase(&pods, "own", "Succeeded").await;
    let logs = pods.logs("own", &LogParams::default()).await.unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines[..2], ["tree/top.txt", "tree/x/y/z.txt"], "{logs}");
    assert!(lines[2].ends_with("/work"), "{logs}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_container_s_files_reach_the_main_container_through_a_shared_volume() {
    if !as_root() {
        return;
    }
    let (sim, client) = start().await;
    let pods = api(&client);
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": "shared"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "tools", "emptyDir": {}}],
            "initContainers": [{
                "name": "install", "image": "busybox",
                "command": ["sh", "-c", "mkdir -p bin/deep && printf '#!/bin/sh\\necho tool ran\\n' > bin/deep/tool && chmod +x bin/deep/tool"],
                "workingDir": "/.tools",
                "volumeMounts": [{"name": "tools", "mountPath": "/.tools"}],
            }],
            "containers": [{
                "name": "main", "image": "busybox",
                "command": ["/.tools/bin/deep/tool"],
                "volumeMounts": [{"name": "tools", "mountPath": "/.tools"}],
            }],
        },
    }))
    .unwrap();
    create(&pods, &p).await;
    wait_phase(&pods, "shared", "Succeeded").await;
    let logs = pods.logs("shared", &LogParams::default()).await.unwrap();
    assert_eq!(logs, "tool ran\n");
    sim.shutdown().await;
}
