//! The kubelet: one task per pod driving its status through the pod life cycle
//! and running each container's command as a local process.

use crate::process::{self, is_pause};
use crate::state::{ContainerEnv, Kill, LogBuf, Mount, PodRuntime, ProcHandle, Shared, lock};
use crate::store::{Kind, Store, uid_of};
use crate::util::{b64_decode, now_rfc3339};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// The node every pod is bound to.
pub(crate) const NODE_NAME: &str = "sim-node";
/// Scheduler message for unschedulable pods.
const UNSCHEDULABLE_MSG: &str = "0/1 nodes are available: 1 Insufficient cpu.";
const CORDONED_MSG: &str = "0/1 nodes are available: 1 node(s) were unschedulable.";
/// How often a container whose configuration cannot be made (a missing secret
/// or key) is tried again; the real kubelet retries on its sync loop.
const CONFIG_RETRY: Duration = Duration::from_millis(200);
/// Message of a kubelet eviction.
pub(crate) const EVICTION_MSG: &str =
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 10Mi.";

/// How a pod's life ended before it is deleted.
enum Stop {
    /// Must be finalised for this kill (deletion or shutdown).
    Killed(Kill),
    /// Terminal phase reached; wait for deletion.
    Terminal,
}

impl crate::Simulator {
    /// How long the end of a container takes to reach the API: its terminated state
    /// (and the phase that follows from it) is written `lag` after its process ended,
    /// while the runtime knows at once (an exec into it is refused as `container not
    /// found`, and the commands exec'd in it have already ended with 137). On a node
    /// the kubelet's PLEG relists containers every second and the status manager then
    /// patches the pod, so a second or two is usual, more on a busy node. Zero (at
    /// once) until set; the setting holds for every pod from then on.
    pub fn status_lag(&self, lag: Duration) {
        self.shared.update_flags(|f| f.status_lag = lag);
    }
}

/// Register the kubelet's runtime for a new pod. Call before the pod is stored,
/// then [`start`] once it is.
pub(crate) fn register(shared: &Shared, pod: &Value) -> Arc<PodRuntime> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("");
    let rt = PodRuntime::new(ns, name, uid);
    lock(&shared.runtimes).insert(uid.to_string(), rt.clone());
    rt
}

/// Start the kubelet task of a registered pod.
pub(crate) fn start(
    shared: Arc<Shared>,
    rt: Arc<PodRuntime>,
    kill_rx: watch::Receiver<Option<Kill>>,
) {
    tokio::spawn(run_pod(shared, rt, kill_rx));
}

async fn run_pod(sh: Arc<Shared>, rt: Arc<PodRuntime>, mut kill_rx: watch::Receiver<Option<Kill>>) {
    let mut pending = match life(&sh, &rt, &mut kill_rx).await {
        Stop::Killed(k) => Some(k),
        Stop::Terminal => None,
    };
    // Terminal or killed: the scheduler no longer counts it on its node.
    sh.release_node(&rt);
    loop {
        let k = match pending.take() {
            Some(k) => k,
            None => next_kill(&mut kill_rx).await,
        };
        match k {
            Kill::Shutdown => {
                rt.signal_all(true);
                break;
            }
            Kill::Delete { .. } => {
                // Terminal or never started: nothing left to stop but execs.
                rt.signal_all(true);
                sh.wait_unfrozen().await;
                let uid = rt.uid.clone();
                let still_there = sh
                    .get_pod(&rt.ns, &rt.name)
                    .is_some_and(|p| uid_of(&p) == uid);
                if still_there && !sh.config.reclaim_delay.is_zero() {
                    tokio::time::sleep(sh.config.reclaim_delay).await;
                    sh.wait_unfrozen().await;
                }
                sh.mutate(|s| {
                    if s.get(&rt.ns, &rt.name).is_some_and(|p| uid_of(p) == uid) {
                        s.remove(&rt.ns, &rt.name);
                    }
                });
                break;
            }
            // A terminal pod is not evicted or OOM-killed again.
            Kill::Evict { .. } | Kill::Oom => rt.signal_all(true),
        }
    }
    lock(&sh.runtimes).remove(&rt.uid);
    let dir = lock(&rt.pod_dir).take();
    if let Some(dir) = dir {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

/// Wait for the next kill request (a dropped sender means shutdown).
async fn next_kill(rx: &mut watch::Receiver<Option<Kill>>) -> Kill {
    loop {
        if rx.changed().await.is_err() {
            return Kill::Shutdown;
        }
        if let Some(k) = rx.borrow_and_update().clone() {
            return k;
        }
    }
}

/// Apply a status change to this pod (same uid), after any freeze.
async fn write(sh: &Shared, rt: &PodRuntime, f: impl FnOnce(&mut Value)) {
    sh.wait_unfrozen().await;
    sh.mutate(|s| {
        if s.get(&rt.ns, &rt.name).is_some_and(|p| uid_of(p) == rt.uid) {
            s.update(&rt.ns, &rt.name, f);
        }
    });
}

/// Set or replace a pod condition.
pub(crate) fn set_cond(
    p: &mut Value,
    ty: &str,
    on: bool,
    reason: Option<&str>,
    message: Option<&str>,
) {
    let status = if on { "True" } else { "False" };
    let now = now_rfc3339();
    if !p["status"]["conditions"].is_array() {
        p["status"]["conditions"] = json!([]);
    }
    let Some(conds) = p["status"]["conditions"].as_array_mut() else {
        return;
    };
    let mut c =
        json!({"type": ty, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    match conds.iter_mut().find(|c| c["type"] == ty) {
        Some(existing) => {
            if existing["status"] == status {
                c["lastTransitionTime"] = existing["lastTransitionTime"].clone();
            }
            *existing = c;
        }
        None => conds.push(c),
    }
}

fn statuses_key(init: bool) -> &'static str {
    if init {
        "initContainerStatuses"
    } else {
        "containerStatuses"
    }
}

/// Set one container's state.
fn set_cstate(p: &mut Value, init: bool, name: &str, state: Value, ready: bool) {
    let key = statuses_key(init);
    let running = state.get("running").is_some();
    if let Some(list) = p["status"][key].as_array_mut()
        && let Some(cs) = list.iter_mut().find(|c| c["name"] == name)
    {
        cs["state"] = state;
        cs["ready"] = json!(ready);
        cs["started"] = json!(running);
    }
}

fn container_specs(pod: &Value, init: bool) -> Vec<Value> {
    let key = if init { "initContainers" } else { "containers" };
    pod["spec"][key].as_array().cloned().unwrap_or_default()
}

fn cname(c: &Value) -> String {
    c["name"].as_str().unwrap_or("").to_string()
}

fn initial_status(c: &Value, uid: &str, reason: &str) -> Value {
    json!({
        "name": c["name"],
        "image": c["image"],
        "imageID": "",
        "containerID": format!("sim://{uid}/{}", cname(c)),
        "ready": false,
        "restartCount": 0,
        "started": false,
        "state": {"waiting": {"reason": reason}},
        "lastState": {},
    })
}

fn terminated(code: i32, reason: &str, started: &str) -> Value {
    json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_rfc3339()}})
}

fn exit_reason(code: i32) -> &'static str {
    if code == 0 { "Completed" } else { "Error" }
}

macro_rules! guard {
    ($sh:expr, $rt:expr, $kill_rx:expr, $fut:expr) => {
        tokio::select! {
            r = $fut => r,
            k = next_kill($kill_rx) => return early_kill($sh, $rt, k).await,
        }
    };
}

/// A kill before any container runs.
async fn early_kill(sh: &Shared, rt: &PodRuntime, k: Kill) -> Stop {
    rt.signal_all(true);
    match k {
        Kill::Evict { message } => {
            write(sh, rt, |p| mark_evicted(p, &message)).await;
            Stop::Terminal
        }
        Kill::Oom => Stop::Terminal,
        k => Stop::Killed(k),
    }
}

/// What the kubelet's eviction manager writes (pkg/kubelet/eviction/
/// eviction_manager.go `evictPod`): phase Failed, reason `Evicted`, its message, and a
/// `DisruptionTarget` condition with reason `TerminationByKubelet`.
fn mark_evicted(p: &mut Value, message: &str) {
    p["status"]["phase"] = json!("Failed");
    p["status"]["reason"] = json!("Evicted");
    p["status"]["message"] = json!(message);
    set_cond(
        p,
        "DisruptionTarget",
        true,
        Some("TerminationByKubelet"),
        Some(message),
    );
    set_cond(p, "Ready", false, Some("PodFailed"), None);
    set_cond(p, "ContainersReady", false, Some("PodFailed"), None);
}

async fn life(
    sh: &Arc<Shared>,
    rt: &Arc<PodRuntime>,
    kill_rx: &mut watch::Receiver<Option<Kill>>,
) -> Stop {
    let Some(pod) = sh.get_pod(&rt.ns, &rt.name) else {
        return Stop::Killed(Kill::Delete { grace: 0 });
    };
    let uid = rt.uid.clone();

    // Scheduling.
    guard!(
        sh,
        rt,
        kill_rx,
        tokio::time::sleep(sh.config.schedule_delay)
    );
    let mut flags_rx = sh.flags_tx.subscribe();
    loop {
        guard!(sh, rt, kill_rx, sh.wait_unfrozen());
        flags_rx.borrow_and_update();
        let (unsched, cordoned) = {
            let f = lock(&sh.flags);
            (f.unschedulable, f.cordoned)
        };
        let full;
        if !unsched && !cordoned {
            match sh.bind_node() {
                Some(i) => {
                    *lock(&rt.node) = Some(i);
                    break;
                }
                None => {
                    let n = sh.config.nodes.max(1);
                    full = format!("0/{n} nodes are available: {n} Too many pods.");
                }
            }
        } else {
            full = String::new();
        }
        let msg = if unsched {
            UNSCHEDULABLE_MSG
        } else if cordoned {
            CORDONED_MSG
        } else {
            full.as_str()
        };
        guard!(
            sh,
            rt,
            kill_rx,
            write(sh, rt, |p| set_cond(
                p,
                "PodScheduled",
                false,
                Some("Unschedulable"),
                Some(msg)
            ))
        );
        guard!(sh, rt, kill_rx, flags_rx.changed()).ok();
    }
    let node_name = sh.node_name(lock(&rt.node).unwrap_or(0));
    guard!(
        sh,
        rt,
        kill_rx,
        write(sh, rt, |p| {
            p["spec"]["nodeName"] = json!(node_name);
            set_cond(p, "PodScheduled", true, None, None);
        })
    );

    // Container creation.
    let inits = container_specs(&pod, true);
    let mains = container_specs(&pod, false);
    let waiting = if inits.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    guard!(
        sh,
        rt,
        kill_rx,
        write(sh, rt, |p| {
            p["status"]["hostIP"] = json!("127.0.0.1");
            p["status"]["hostIPs"] = json!([{"ip": "127.0.0.1"}]);
            p["status"]["podIP"] = json!("127.0.0.1");
            p["status"]["podIPs"] = json!([{"ip": "127.0.0.1"}]);
            p["status"]["startTime"] = json!(now_rfc3339());
            set_cond(p, "PodReadyToStartContainers", false, None, None);
            if inits.is_empty() {
                set_cond(p, "Initialized", true, None, None);
            } else {
                set_cond(
                    p,
                    "Initialized",
                    false,
                    Some("ContainersNotInitialized"),
                    None,
                );
                p["status"]["initContainerStatuses"] = inits
                    .iter()
                    .map(|c| initial_status(c, &uid, "PodInitializing"))
                    .collect();
            }
            set_cond(p, "Ready", false, Some("ContainersNotReady"), None);
            set_cond(
                p,
                "ContainersReady",
                false,
                Some("ContainersNotReady"),
                None,
            );
            p["status"]["containerStatuses"] = mains
                .iter()
                .map(|c| initial_status(c, &uid, waiting))
                .collect();
        })
    );

    // Image pulls: instant, unless a failure is configured for the image.
    for (init, c) in inits
        .iter()
        .map(|c| (true, c))
        .chain(mains.iter().map(|c| (false, c)))
    {
        let image = c["image"].as_str().unwrap_or("").to_string();
        let name = cname(c);
        let mut backoff = false;
        loop {
            // A pull attempt (not a back-off wait) uses up one of a limited failure.
            let failure = {
                let mut flags = lock(&sh.flags);
                let hit = flags
                    .image_failures
                    .iter()
                    .position(|(pat, _, _)| image.contains(pat.as_str()));
                hit.map(|i| {
                    let entry = &mut flags.image_failures[i];
                    let msg = entry.1.clone();
                    if !backoff && let Some(left) = entry.2.as_mut() {
                        *left = left.saturating_sub(1);
                        if *left == 0 {
                            flags.image_failures.remove(i);
                        }
                    }
                    msg
                })
            };
            let Some(msg) = failure else {
                if backoff {
                    guard!(
                        sh,
                        rt,
                        kill_rx,
                        write(sh, rt, |p| set_cstate(
                            p,
                            init,
                            &name,
                            json!({"waiting": {"reason": waiting}}),
                            false
                        ))
                    );
                }
                break;
            };
            let state = if backoff {
                json!({"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\": ErrImagePull: {msg}")}})
            } else {
                json!({"waiting": {"reason": "ErrImagePull", "message": msg}})
            };
            guard!(
                sh,
                rt,
                kill_rx,
                write(sh, rt, |p| set_cstate(p, init, &name, state, false))
            );
            let pause = if backoff { 1000 } else { 300 };
            backoff = !backoff;
            guard!(
                sh,
                rt,
                kill_rx,
                tokio::time::sleep(Duration::from_millis(pause))
            );
        }
    }
    guard!(sh, rt, kill_rx, tokio::time::sleep(sh.config.start_delay));

    if let Err(e) = prepare(sh, rt, &pod) {
        let msg = format!("failed to prepare container directories: {e}");
        guard!(
            sh,
            rt,
            kill_rx,
            write(sh, rt, |p| {
                for c in &mains {
                    set_cstate(
                        p,
                        false,
                        &cname(c),
                        json!({"waiting": {"reason": "CreateContainerError", "message": msg}}),
                        false,
                    );
                }
            })
        );
        guard!(sh, rt, kill_rx, std::future::pending::<()>());
    }

    guard!(
        sh,
        rt,
        kill_rx,
        write(sh, rt, |p| set_cond(
            p,
            "PodReadyToStartContainers",
            true,
            None,
            None
        ))
    );

    // Init containers, in order.
    for c in &inits {
        match run_set(sh, rt, &pod, std::slice::from_ref(c), true, kill_rx).await {
            SetEnd::Exited(codes) => {
                if codes.iter().any(|&c| c != 0) {
                    write(sh, rt, |p| {
                        p["status"]["phase"] = json!("Failed");
                        set_cond(
                            p,
                            "Initialized",
                            false,
                            Some("ContainersNotInitialized"),
                            None,
                        );
                    })
                    .await;
                    return Stop::Terminal;
                }
            }
            SetEnd::Killed(k, _) => return after_kill(sh, rt, k).await,
        }
    }
    if !inits.is_empty() {
        guard!(
            sh,
            rt,
            kill_rx,
            write(sh, rt, |p| {
                set_cond(p, "Initialized", true, None, None);
                for c in &mains {
                    set_cstate(
                        p,
                        false,
                        &cname(c),
                        json!({"waiting": {"reason": "ContainerCreating"}}),
                        false,
                    );
                }
            })
        );
    }

    match run_set(sh, rt, &pod, &mains, false, kill_rx).await {
        SetEnd::Exited(codes) => {
            write(sh, rt, |p| set_final_phase(p, &codes)).await;
            Stop::Terminal
        }
        SetEnd::Killed(k, codes) => {
            if matches!(k, Kill::Delete { .. }) {
                write(sh, rt, |p| set_final_phase(p, &codes)).await;
            }
            after_kill(sh, rt, k).await
        }
    }
}

/// The phase once every main container has stopped, as pkg/kubelet/kubelet_pods.go
/// `getPhase` computes it from the exit codes alone, whatever stopped them: all 0 is
/// Succeeded (so a deleted pause pod, which exits 0 on TERM, is Succeeded), else Failed.
fn set_final_phase(p: &mut Value, codes: &[i32]) {
    let ok = codes.iter().all(|&c| c == 0);
    p["status"]["phase"] = json!(if ok { "Succeeded" } else { "Failed" });
    let reason = if ok { "PodCompleted" } else { "PodFailed" };
    set_cond(p, "Ready", false, Some(reason), None);
    set_cond(p, "ContainersReady", false, Some(reason), None);
}

async fn after_kill(sh: &Shared, rt: &PodRuntime, k: Kill) -> Stop {
    match k {
        Kill::Evict { message } => {
            write(sh, rt, |p| mark_evicted(p, &message)).await;
            Stop::Terminal
        }
        Kill::Oom => {
            write(sh, rt, |p| {
                p["status"]["phase"] = json!("Failed");
                set_cond(p, "Ready", false, Some("PodFailed"), None);
                set_cond(p, "ContainersReady", false, Some("PodFailed"), None);
            })
            .await;
            Stop::Terminal
        }
        k => Stop::Killed(k),
    }
}

/// Build per-container directories and mounts (environments are made when
/// each container starts).
fn prepare(sh: &Shared, rt: &PodRuntime, pod: &Value) -> std::io::Result<()> {
    let pod_dir = sh
        .work_root
        .join(&rt.ns)
        .join(format!("{}-{}", rt.name, rt.uid));
    *lock(&rt.pod_dir) = Some(pod_dir.clone());
    let mut volumes: Vec<(String, PathBuf)> = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let dir = match v
            .pointer("/persistentVolumeClaim/claimName")
            .and_then(Value::as_str)
        {
            Some(claim) => sh.pvc_root.join(claim),
            None => pod_dir.join("volumes").join(&name),
        };
        std::fs::create_dir_all(&dir)?;
        volumes.push((name, dir));
    }
    let all: Vec<Value> = container_specs(pod, true)
        .into_iter()
        .chain(container_specs(pod, false))
        .collect();
    let bind = process::bind_mounts_available();
    for c in &all {
        let name = cname(c);
        let root = pod_dir.join("containers").join(&name);
        std::fs::create_dir_all(&root)?;
        let mut specs: Vec<&Value> = c["volumeMounts"].as_array().into_iter().flatten().collect();
        specs.sort_by_key(|m| m["mountPath"].as_str().map(str::len).unwrap_or(0));
        let mut mounts: Vec<Mount> = Vec::new();
        for m in specs {
            let vol = m["name"].as_str().unwrap_or("");
            let Some((_, vdir)) = volumes.iter().find(|(n, _)| n == vol) else {
                continue;
            };
            let path = m["mountPath"].as_str().unwrap_or("").to_owned();
            let point = root.join(process::relative(&path));
            if point == root
                || mounts
                    .iter()
                    .any(|o| process::relative(&o.path) == process::relative(&path))
            {
                continue;
            }
            let mut source = vdir.clone();
            if let Some(sub) = m["subPath"].as_str().filter(|s| !s.is_empty()) {
                source = source.join(process::relative(sub));
                if !source.is_file() {
                    std::fs::create_dir_all(&source)?;
                }
            }
            if let Some(parent) = point.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if !bind {
                // No mount namespaces here: a link to the volume stands in for the mount.
                if point.symlink_metadata().is_err() {
                    std::os::unix::fs::symlink(&source, &point)?;
                }
            } else if source.is_file() {
                // A file bound onto a file; inside a parent mount the container's own
                // process makes it (`process::mount_script`).
                if point.symlink_metadata().is_err() {
                    std::fs::File::create(&point)?;
                }
            } else {
                std::fs::create_dir_all(&point)?;
            }
            mounts.push(Mount {
                path,
                source,
                read_only: m["readOnly"] == true,
            });
        }
        let cwd = match c["workingDir"].as_str().filter(|s| !s.is_empty()) {
            Some(wd) => root.join(process::relative(wd)),
            None => root.clone(),
        };
        let env = ContainerEnv {
            root,
            cwd,
            env: Vec::new(),
            mounts,
            bind,
        };
        // The working directory, made where the container will see it (inside the
        // volume mounted there, if any), as the runtime makes a missing one.
        std::fs::create_dir_all(&env.cwd)?;
        std::fs::create_dir_all(env.host_path(&env.cwd))?;
        lock(&rt.containers).insert(name, env);
    }
    Ok(())
}

/// A secret's data, decoded (values are valid base64 in the store).
fn secret_data(store: &Store, ns: &str, name: &str) -> Option<Vec<(String, String)>> {
    let secret = store.get_kind(Kind::Secret, ns, name)?;
    Some(
        secret["data"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let bytes = b64_decode(v.as_str().unwrap_or("")).unwrap_or_default();
                (k.clone(), String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect(),
    )
}

/// The message of a missing secret, as the kubelet's secret manager words it.
fn secret_not_found(name: &str) -> String {
    format!("secret \"{name}\" not found")
}

/// A container's environment, made as the kubelet does when it starts the
/// container: host `PATH`, `HOME`, `HOSTNAME`, then `envFrom` (secrets, every
/// key, with the prefix), then `env` in order (`$(VAR)` expanded; `fieldRef`
/// and `secretKeyRef` resolved). A required secret or key that is missing is
/// an error: the container cannot be configured yet.
fn build_env(
    store: &Store,
    pod: &Value,
    c: &Value,
    root: &std::path::Path,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("");
    let root_s = root.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".into(), root_s.clone()),
        (
            "HOSTNAME".into(),
            pod.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
        ),
    ];
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c["envFrom"].as_array().into_iter().flatten() {
        // Config maps are not simulated: their references are skipped.
        let Some(r) = from.get("secretRef").filter(|r| r.is_object()) else {
            continue;
        };
        let name = r["name"].as_str().unwrap_or("");
        let prefix = from["prefix"].as_str().unwrap_or("");
        match secret_data(store, ns, name) {
            // Every key becomes a variable: kubelets since 1.30 no longer skip
            // keys that are not C identifiers.
            Some(data) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), v);
                }
            }
            None if r["optional"] == true => {}
            None => return Err(secret_not_found(name)),
        }
    }
    for e in c["env"].as_array().into_iter().flatten() {
        let Some(name) = e["name"].as_str() else {
            continue;
        };
        let literal = e["value"].as_str().unwrap_or("");
        let value = if !literal.is_empty() {
            Some(process::expand(literal, &env))
        } else if let Some(path) = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
        {
            field_ref(pod, path)
        } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
            let sname = r["name"].as_str().unwrap_or("");
            let key = r["key"].as_str().unwrap_or("");
            let optional = r["optional"] == true;
            match secret_data(store, ns, sname) {
                Some(data) => match data.into_iter().find(|(k, _)| k == key) {
                    Some((_, v)) => Some(v),
                    None if optional => None,
                    None => {
                        return Err(format!("couldn't find key {key} in Secret {ns}/{sname}"));
                    }
                },
                None if optional => None,
                None => return Err(secret_not_found(sname)),
            }
        } else if e.get("valueFrom").is_none_or(Value::is_null) {
            Some(String::new())
        } else {
            // Config map and resource references are not simulated.
            None
        };
        if let Some(v) = value {
            set(&mut env, name.to_string(), v);
        }
    }
    set(&mut env, "JETBRIDGE_SIM_ROOT".into(), root_s);
    Ok(env)
}

/// Make a container's environment now; on success it is stored for the
/// container and its execs.
fn configure(sh: &Shared, rt: &PodRuntime, pod: &Value, c: &Value) -> Result<(), String> {
    let name = cname(c);
    let Some(root) = lock(&rt.containers).get(&name).map(|e| e.root.clone()) else {
        return Err(format!("container {name} has no root directory"));
    };
    let env = build_env(&lock(&sh.store), pod, c, &root)?;
    if let Some(e) = lock(&rt.containers).get_mut(&name) {
        e.env = env;
    }
    Ok(())
}

fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let s = |p: &str| pod.pointer(p).and_then(Value::as_str).map(str::to_string);
    match path {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "metadata.uid" => s("/metadata/uid"),
        "spec.nodeName" => s("/spec/nodeName").or(Some(NODE_NAME.into())),
        "spec.serviceAccountName" => s("/spec/serviceAccountName").or(Some("default".into())),
        "status.podIP" | "status.hostIP" => Some("127.0.0.1".into()),
        p => {
            let (map, key) = if let Some(k) = p.strip_prefix("metadata.labels['") {
                ("labels", k)
            } else if let Some(k) = p.strip_prefix("metadata.annotations['") {
                ("annotations", k)
            } else {
                return None;
            };
            let key = key.strip_suffix("']")?;
            pod["metadata"][map][key].as_str().map(str::to_string)
        }
    }
}

/// argv of a container: command + args, with `$(VAR)` expanded.
fn container_argv(c: &Value, env: &[(String, String)]) -> Vec<String> {
    let strs = |k: &str| -> Vec<String> {
        c[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| process::expand(s, env))
            .collect()
    };
    let mut argv = strs("command");
    if argv.is_empty() {
        // Without a command the image entrypoint would run; it is unknown here.
        return Vec::new();
    }
    argv.extend(strs("args"));
    argv
}

/// Copy a pipe into a log buffer until EOF.
pub(crate) async fn pump_log(mut r: impl AsyncRead + Unpin, log: Arc<LogBuf>) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        log.append(&buf[..n]);
    }
}

/// Start one container; returns a receiver that yields its exit code.
/// Name of jetbridge's init container that installs the pause program.
const PAUSE_INSTALLER: &str = "jetbridge-pause";
/// How long a container's process may take to make its mounts and exec its command
/// before the container is reported running anyway.
const EXEC_WAIT: Duration = Duration::from_secs(2);

async fn start_container(
    sh: &Shared,
    rt: &Arc<PodRuntime>,
    c: &Value,
) -> watch::Receiver<Option<i32>> {
    let name = cname(c);
    let log = LogBuf::new();
    lock(&rt.logs).insert(name.clone(), log.clone());
    let cenv = lock(&rt.containers).get(&name).cloned();
    let (tx, rx) = watch::channel(None);
    let Some(cenv) = cenv else {
        log.finish();
        let _ = tx.send(Some(128));
        return rx;
    };
    let argv = container_argv(c, &cenv.env);
    // jetbridge's busybox pause installer (`sh -c ...`, no step-pod helper) copies a
    // static busybox out of the helper image; the host has no such image, so the
    // simulator stands in for it: it completes at once and the main container's
    // `.../pause` is then simulated like any pause binary. The step-pod helper's
    // installer (`jetbridge-helper install .`) runs for real, from the file the test
    // says the image holds (`Simulator::image_file`), as does the helper it installs.
    if name == PAUSE_INSTALLER && argv.first().is_some_and(|p| p == "sh") {
        log.finish();
        let _ = tx.send(Some(0));
        return rx;
    }
    let argv = crate::images::host_argv(
        &lock(&sh.flags),
        c["image"].as_str().unwrap_or_default(),
        argv,
    );
    let argv = cenv.resolve_program(argv);
    if let Some(is_pause_binary) = is_pause(&argv) {
        let tx = Arc::new(tx);
        let id = rt.add_proc(ProcHandle::Pause(tx.clone(), is_pause_binary), &name, false);
        let rt = rt.clone();
        let mut wait = tx.subscribe();
        tokio::spawn(async move {
            let _ = wait.wait_for(Option::is_some).await;
            rt.remove_proc(id);
            rt.container_exited(&name);
            log.finish();
        });
        return rx;
    }
    let spawned = cenv.command(&argv).map(|mut cmd| cmd.spawn());
    if cenv.bind
        && let Some(Ok(child)) = &spawned
        && let Some(pid) = process::pgid(child)
    {
        // Running once the command runs, its mounts made (see `process::await_exec`).
        process::await_exec(pid, &argv, &cenv.cwd, EXEC_WAIT).await;
    }
    match spawned {
        Some(Ok(mut child)) => {
            let id = process::pgid(&child).map(|g| rt.add_proc(ProcHandle::Group(g), &name, false));
            let out = child.stdout.take();
            let err = child.stderr.take();
            let rt = rt.clone();
            tokio::spawn(async move {
                let o = async {
                    if let Some(o) = out {
                        pump_log(o, log.clone()).await;
                    }
                };
                let e = async {
                    if let Some(e) = err {
                        pump_log(e, log.clone()).await;
                    }
                };
                let (status, _, _) = tokio::join!(process::wait_init(&mut child), o, e);
                if let Some(id) = id {
                    rt.remove_proc(id);
                }
                rt.container_exited(&name);
                log.finish();
                let code = status.map(process::exit_code).unwrap_or(128);
                let _ = tx.send(Some(code));
            });
        }
        Some(Err(e)) => {
            log.append(format!("failed to start {:?}: {e}\n", argv.first()).as_bytes());
            log.finish();
            let _ = tx.send(Some(process::spawn_error_code(&e)));
        }
        None => {
            log.finish();
            let _ = tx.send(Some(128));
        }
    }
    rx
}

enum SetEnd {
    Exited(Vec<i32>),
    Killed(Kill, Vec<i32>),
}

async fn wait_exit(i: usize, mut rx: watch::Receiver<Option<i32>>) -> (usize, i32) {
    let code = match rx.wait_for(Option::is_some).await {
        Ok(v) => v.unwrap_or(137),
        Err(_) => 137,
    };
    (i, code)
}

/// Start every container of the set that has not started yet and can be
/// configured; the others wait with `CreateContainerConfigError` (written when
/// the message changes). Returns the receivers of the containers started.
async fn start_ready(
    sh: &Shared,
    rt: &Arc<PodRuntime>,
    pod: &Value,
    specs: &[Value],
    init: bool,
    slots: &mut [Slot],
    codes: &[Option<i32>],
) -> Vec<(usize, watch::Receiver<Option<i32>>)> {
    let mut launched = Vec::new();
    let mut failures = Vec::new();
    for (i, c) in specs.iter().enumerate() {
        if slots[i].started.is_some() {
            continue;
        }
        match configure(sh, rt, pod, c) {
            Ok(()) => {
                launched.push((i, start_container(sh, rt, c).await));
                slots[i] = Slot {
                    started: Some(now_rfc3339()),
                    blocked: None,
                };
            }
            Err(msg) => {
                if slots[i].blocked.as_deref() != Some(msg.as_str()) {
                    failures.push((i, msg.clone()));
                }
                slots[i].blocked = Some(msg);
            }
        }
    }
    if launched.is_empty() && failures.is_empty() {
        return launched;
    }
    let all_started = slots.iter().all(|s| s.started.is_some());
    let all_running = codes.iter().all(Option::is_none);
    write(sh, rt, |p| {
        for (i, _) in &launched {
            let at = slots[*i].started.clone().unwrap_or_default();
            set_cstate(
                p,
                init,
                &cname(&specs[*i]),
                json!({"running": {"startedAt": at}}),
                !init,
            );
        }
        for (i, msg) in &failures {
            set_cstate(
                p,
                init,
                &cname(&specs[*i]),
                json!({"waiting": {"reason": "CreateContainerConfigError", "message": msg}}),
                false,
            );
        }
        // A pod with a container still waiting stays Pending.
        if !init && all_started && !launched.is_empty() {
            p["status"]["phase"] = json!("Running");
            if all_running {
                set_cond(p, "Ready", true, None, None);
                set_cond(p, "ContainersReady", true, None, None);
            }
        }
    })
    .await;
    launched
}

/// One container of a set: when it started, or why it cannot start yet.
#[derive(Debug, Default)]
struct Slot {
    started: Option<String>,
    blocked: Option<String>,
}

/// The state of a container that never started when its pod is stopped.
fn never_started() -> Value {
    json!({"terminated": {
        "exitCode": 137,
        "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
        "startedAt": null,
        "finishedAt": now_rfc3339(),
    }})
}

/// Run containers together until all exit or a kill arrives. A container
/// whose configuration cannot be made yet waits and is tried again every
/// [`CONFIG_RETRY`]; the others run meanwhile.
async fn run_set(
    sh: &Shared,
    rt: &Arc<PodRuntime>,
    pod: &Value,
    specs: &[Value],
    init: bool,
    kill_rx: &mut watch::Receiver<Option<Kill>>,
) -> SetEnd {
    let n = specs.len();
    let mut slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
    let mut codes: Vec<Option<i32>> = vec![None; n];
    let mut waits = FuturesUnordered::new();
    for (i, rx) in start_ready(sh, rt, pod, specs, init, &mut slots, &codes).await {
        waits.push(wait_exit(i, rx));
    }
    let report = |codes: &[Option<i32>], i: usize, code: i32, reason: &str, started_at: &str| {
        let name = cname(&specs[i]);
        let state = terminated(code, reason, started_at);
        let any_running = codes.iter().any(Option::is_none);
        move |p: &mut Value| {
            set_cstate(p, init, &name, state, false);
            if !init && any_running {
                set_cond(p, "Ready", false, Some("ContainersNotReady"), None);
                set_cond(
                    p,
                    "ContainersReady",
                    false,
                    Some("ContainersNotReady"),
                    None,
                );
            }
        }
    };
    // The main container the OOM killer took, its end still to be reported.
    let mut oom_killed: Option<usize> = None;
    loop {
        let waiting = slots.iter().any(|s| s.started.is_none());
        if waits.is_empty() && !waiting {
            return SetEnd::Exited(codes.iter().map(|c| c.unwrap_or(0)).collect());
        }
        tokio::select! {
            Some((i, code)) = waits.next(), if !waits.is_empty() => {
                codes[i] = Some(code);
                let at = slots[i].started.clone().unwrap_or_default();
                // What the runtime reports for a container whose cgroup met its limit
                // (containerd's `Reason: OOMKilled` from the task's OOM event; kubelet
                // pkg/kubelet/kuberuntime/kuberuntime_container.go `toKubeContainerStatus`).
                let reason = if oom_killed == Some(i) {
                    "OOMKilled"
                } else {
                    exit_reason(code)
                };
                // The kubelet hears of a container's end from its PLEG relist (every
                // second, pkg/kubelet/kubelet.go `genericPlegRelistPeriod`) and the status
                // manager then patches the pod: the API learns of it late.
                let lag = lock(&sh.flags).status_lag;
                if !lag.is_zero() {
                    tokio::time::sleep(lag).await;
                }
                write(sh, rt, report(&codes, i, code, reason, &at)).await;
            }
            () = tokio::time::sleep(CONFIG_RETRY), if waiting => {
                for (i, rx) in start_ready(sh, rt, pod, specs, init, &mut slots, &codes).await {
                    waits.push(wait_exit(i, rx));
                }
            }
            k = next_kill(kill_rx) => {
                if matches!(k, Kill::Oom) && !init {
                    // cgroup v2 with `memory.oom.group`, which the kubelet sets from 1.28
                    // unless `singleProcessOOMKill` (1.32+) says otherwise
                    // (pkg/kubelet/kuberuntime/kuberuntime_container_linux.go): the kernel
                    // kills every process of the first main container's cgroup, its execs
                    // included, and nothing of the pod's other containers. With restartPolicy Never
                    // the container stays terminated, and while another container runs
                    // the pod stays Running (pkg/kubelet/kubelet_pods.go `getPhase`:
                    // Running while any container runs); it fails once all have ended.
                    let running = slots.first().is_some_and(|s| s.started.is_some());
                    if running && codes[0].is_none() {
                        oom_killed = Some(0);
                        rt.kill_container(&cname(&specs[0]));
                    }
                    continue;
                }
                match &k {
                    Kill::Shutdown => {
                        rt.signal_all(true);
                        return SetEnd::Killed(k, Vec::new());
                    }
                    Kill::Delete { grace } => {
                        rt.signal_all(false);
                        let deadline = tokio::time::sleep(Duration::from_secs(*grace));
                        tokio::pin!(deadline);
                        loop {
                            tokio::select! {
                                next = waits.next() => match next {
                                    Some((i, code)) => codes[i] = Some(code),
                                    None => break,
                                },
                                () = &mut deadline => break,
                            }
                        }
                        rt.signal_all(true);
                    }
                    Kill::Evict { .. } | Kill::Oom => rt.signal_all(true),
                }
                while let Some((i, code)) = waits.next().await {
                    codes[i] = Some(code);
                }
                let codes: Vec<i32> = codes.iter().map(|c| c.unwrap_or(137)).collect();
                // The OOM killer hits the first main container, if it runs.
                let oom = matches!(k, Kill::Oom) && slots[0].started.is_some();
                write(sh, rt, |p| {
                    for (i, c) in specs.iter().enumerate() {
                        let already = p["status"][statuses_key(init)]
                            .as_array()
                            .and_then(|l| l.iter().find(|s| s["name"] == c["name"]))
                            .is_some_and(|s| s.pointer("/state/terminated").is_some());
                        if already && !(oom && i == 0) {
                            continue;
                        }
                        let state = match &slots[i].started {
                            None => never_started(),
                            Some(at) if oom && i == 0 => terminated(137, "OOMKilled", at),
                            Some(at) => terminated(codes[i], exit_reason(codes[i]), at),
                        };
                        set_cstate(p, init, &cname(c), state, false);
                    }
                    set_cond(p, "Ready", false, Some("PodFailed"), None);
                    set_cond(p, "ContainersReady", false, Some("PodFailed"), None);
                })
                .await;
                let codes = if oom {
                    codes.iter().enumerate().map(|(i, &c)| if i == 0 { 137 } else { c }).collect()
                } else {
                    codes
                };
                return SetEnd::Killed(k, codes);
            }
        }
    }
}
