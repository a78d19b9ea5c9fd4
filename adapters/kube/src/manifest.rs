//! The pure translation of a domain [`PodSpec`] into a Kubernetes `Pod`.
//!
//! Everything a pod looks like is decided here, with no I/O, so it can be unit-tested
//! field by field (see the crate README for a sample manifest).

use std::collections::{BTreeMap, BTreeSet};

use jetbridge_core::names::{is_dns_label, label};
use jetbridge_core::ports::{CopySource, MountInfo, MountSource, PodSpec, Resources};
use jetbridge_core::{Error, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec as K8sPodSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::config::{
    DEFAULT_NON_ROOT_UID, INSTALLED_HELPER, KubeConfig, RUNS_DIR, STEP_HELPER_PATH, TOOLS_DIR,
};

/// Name of the step's container.
pub const MAIN_CONTAINER: &str = "main";
/// Name of the helper container that streams artifacts.
pub const HELPER_CONTAINER: &str = "helper";
/// Name of the init container that installs the pause program.
pub const PAUSE_INIT_CONTAINER: &str = "jetbridge-pause";
/// Parent of every pod's working directory.
pub const WORK_ROOT: &str = "/tmp/build";

const WORKDIR_VOLUME: &str = "workdir";
const TOOLS_VOLUME: &str = "jetbridge-tools";
/// The `emptyDir` of the step-pod helper's command records, at [`RUNS_DIR`].
const RUNS_VOLUME: &str = "jetbridge-runs";
const CACHE_VOLUME: &str = "cache";
/// Where a copy init container sees its source and destination (relative paths inside
/// its working directory, so nothing depends on the helper image's layout).
const COPY_DIR: &str = "/jetbridge-copy";

/// Exit code of a copy init container whose copy does not match the sealed digest;
/// [`crate::status::corrupt_input`] turns it into `Corrupt`.
pub const COPY_CORRUPT_EXIT: i32 = 86;
/// Environment of a copy init container: the digest its copy must have, and the
/// artifact and build it names when it does not.
pub const COPY_DIGEST_ENV: &str = "JETBRIDGE_DIGEST";
/// See [`COPY_DIGEST_ENV`].
pub const COPY_ARTIFACT_ENV: &str = "JETBRIDGE_ARTIFACT";
/// See [`COPY_DIGEST_ENV`].
pub const COPY_BUILD_ENV: &str = "JETBRIDGE_BUILD";

/// The copy init container's script (busybox or GNU tools): copy, then compute the
/// tree digest of the copy (`jetbridge_core::digest`: one line per entry, escaped,
/// sorted by path, behind a version line, all through sha256) and compare it with the
/// sealed one, so the step only ever starts on a verified copy. Each file is hashed by
/// `sha256sum` in batches, not one process per file. Anything that goes wrong while
/// listing makes the digest differ, never match. Names holding a newline, a tab or a
/// control character cannot be listed this way and fail the check.
/// Modes count as the tree digest counts them: setuid and setgid dropped, sticky kept
/// (`core::archive`), hence the first octal digit taken modulo 2.
const COPY_SCRIPT: &str = r#"set -e
cp -a src/. dst/
cd dst
got=$( {
  echo jetbridge-tree-v1
  {
    find . -mindepth 1 -type d -exec stat -c 'd %a %n' {} +
    find . -type f -exec sh -c 'stat -c "f %a %s %n" "$@" && sha256sum "$@"' sh {} +
    find . -type l -exec sh -c 'for l do printf "l %s\n" "$l"; readlink "$l"; done' sh {} +
    find . -mindepth 1 ! -type d ! -type f ! -type l -exec printf '? %s\n' {} +
  } | awk '
function esc(s,   o, i, c) {
  o = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c == "\\") o = o "\\\\"; else if (c == " ") o = o "\\x20"; else o = o c
  }
  return o
}
function unesc(s,   o, i, c) {
  o = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c == "\\") { i++; c = substr(s, i, 1) }
    o = o c
  }
  return o
}
function pad(m,   p) { p = substr("0000" m, length(m) + 1); return (substr(p, 1, 1) % 2) substr(p, 2) }
function out(p, line) { printf "%s\t%s\n", esc(substr(p, 3)), line }
/^d / { p = substr($0, length($2) + 4); out(p, "d " pad($2) " " esc(substr(p, 3))); next }
/^f / { p = substr($0, length($2) + length($3) + 5); mode[p] = $2; size[p] = $3; next }
/^l / { p = substr($0, 3); getline t; out(p, "l " esc(substr(p, 3)) " " esc(t)); next }
/^\? / { print "?\t?"; next }
{
  if (substr($0, 1, 1) == "\\") { h = substr($0, 2, 64); p = unesc(substr($0, 68)) }
  else { h = substr($0, 1, 64); p = substr($0, 67) }
  if (!(p in mode)) { print "?\t?"; next }
  out(p, "f " pad(mode[p]) " " size[p] " " h " " esc(substr(p, 3)))
}' | LC_ALL=C sort | cut -f2-
} | sha256sum )
if [ "sha256:${got%% *}" != "$JETBRIDGE_DIGEST" ]; then
  echo "the copy of input $JETBRIDGE_ARTIFACT does not match its sealed digest $JETBRIDGE_DIGEST" >&2
  exit 86
fi
"#;

/// The pause program as installed by the init container: a shell script run by the
/// copied static busybox, so the step image needs no shell. It exits at once on SIGTERM
/// (a plain `sleep` as PID 1 would ignore it and hold the pod for its grace period).
const PAUSE_INSTALL_SCRIPT: &str = concat!(
    "cp /bin/busybox busybox && ",
    "printf '%s\\n' '#!/.jetbridge/busybox sh' ",
    "'trap \"exit 0\" TERM INT' ",
    "'while :; do /.jetbridge/busybox sleep 3600 & wait $!; done' > pause && ",
    "chmod 0555 busybox pause"
);

/// The helper container's idle command (busybox `sh`), ending promptly on SIGTERM.
const HELPER_IDLE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// The working directory of a pod: `/tmp/build/<8hex>`, the hex from the spec's handle
/// label when it starts with 8 hex digits, else from a hash of the pod name.
pub fn working_dir(spec: &PodSpec) -> String {
    let from_handle = spec
        .handle()
        .filter(|h| h.len() >= 8 && h.bytes().take(8).all(|b| b.is_ascii_hexdigit()))
        .map(|h| h[..8].to_ascii_lowercase());
    let hex8 = from_handle.unwrap_or_else(|| {
        let d = jetbridge_core::digest::sha256(spec.name.as_bytes());
        hex::encode(d)[..8].to_owned()
    });
    format!("{WORK_ROOT}/{hex8}")
}

/// The subPath of a cache on the cache claim: `caches/<first 32 hex of sha256(key)>`.
/// Hashing keeps any key (slashes, spaces, `..`) a single safe path segment.
pub fn cache_sub_path(key: &str) -> String {
    let d = jetbridge_core::digest::sha256(key.as_bytes());
    format!("caches/{}", &hex::encode(d)[..32])
}

/// Check a mount path: relative, `/`-separated, no empty, `.` or `..` segments.
fn check_mount_path(path: &str) -> Result<()> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !path.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "mount path {path:?} must be relative, without empty, '.' or '..' segments"
        )))
    }
}

/// Check a PVC subPath: relative, no `..` (the kubelet refuses those anyway).
fn check_sub_path(sub_path: &str) -> Result<()> {
    let ok = !sub_path.starts_with('/')
        && sub_path.split('/').all(|seg| seg != "..")
        && !sub_path.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "subPath {sub_path:?} must be relative and free of '..'"
        )))
    }
}

/// The restricted container security context: non-root, no privilege escalation, all
/// capabilities dropped, RuntimeDefault seccomp.
fn restricted_context(uid: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// An environment variable with a literal value (never a secret).
fn plain_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

fn resources(r: &Resources) -> Option<ResourceRequirements> {
    let mut q = BTreeMap::new();
    if let Some(cpu) = r.cpu_millis {
        q.insert("cpu".to_owned(), Quantity(format!("{cpu}m")));
    }
    if let Some(mem) = r.memory_bytes {
        q.insert("memory".to_owned(), Quantity(mem.to_string()));
    }
    if q.is_empty() {
        return None;
    }
    // Requests equal limits: the step gets what it asked for and no more, and the pod
    // is in the Guaranteed class when both are set.
    Some(ResourceRequirements {
        requests: Some(q.clone()),
        limits: Some(q),
        claims: None,
    })
}

fn mount(volume: &str, path: String, sub_path: Option<String>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path,
        sub_path,
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn pvc_volume(name: &str, claim: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_owned(),
            read_only: None,
        }),
        ..Volume::default()
    }
}

/// Volumes, the main container's mounts and the copy init containers of a spec.
#[derive(Default)]
struct Mounts {
    volumes: Vec<Volume>,
    /// Mounts under the working directory (main and helper see the same tree).
    work_mounts: Vec<VolumeMount>,
    copy_inits: Vec<Container>,
}

fn plan_mounts(spec: &PodSpec, cfg: &KubeConfig, workdir: &str) -> Result<Mounts> {
    let mut m = Mounts::default();
    let mut claims: BTreeMap<String, String> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut claim_volume = |claim: &str, volumes: &mut Vec<Volume>| -> String {
        if let Some(v) = claims.get(claim) {
            return v.clone();
        }
        let name = format!("pvc-{}", claims.len());
        volumes.push(pvc_volume(&name, claim));
        claims.insert(claim.to_owned(), name.clone());
        name
    };
    // Parents before children, so nested mounts land inside their parents.
    let mut order: Vec<usize> = (0..spec.mounts.len()).collect();
    order.sort_by(|a, b| spec.mounts[*a].path.cmp(&spec.mounts[*b].path));
    let mut cache_volume = false;
    for i in order {
        let mnt = &spec.mounts[i];
        check_mount_path(&mnt.path)?;
        if !seen.insert(mnt.path.clone()) {
            return Err(Error::invalid(format!(
                "mount path {:?} given twice",
                mnt.path
            )));
        }
        let target = format!("{workdir}/{}", mnt.path);
        match &mnt.source {
            MountSource::Empty => {
                let name = format!("m-{i}");
                m.volumes.push(empty_dir(&name));
                m.work_mounts.push(mount(&name, target, None, false));
            }
            MountSource::Cache { key } => match &cfg.cache_claim {
                Some(claim) => {
                    if !cache_volume {
                        m.volumes.push(pvc_volume(CACHE_VOLUME, claim));
                        cache_volume = true;
                    }
                    let sub = cache_sub_path(key);
                    m.work_mounts
                        .push(mount(CACHE_VOLUME, target, Some(sub), false));
                }
                None => {
                    let name = format!("m-{i}");
                    m.volumes.push(empty_dir(&name));
                    m.work_mounts.push(mount(&name, target, None, false));
                }
            },
            MountSource::WriteInto(info) | MountSource::CopyOf(CopySource { mount: info, .. }) => {
                let (claim, sub_path) = match info {
                    MountInfo::HostPath { .. } => {
                        return Err(Error::unsupported(
                            "host path mounts are not supported on Kubernetes",
                        ));
                    }
                    MountInfo::SharedVolume {
                        volume: claim,
                        sub_path,
                    } => (claim, sub_path),
                };
                if cfg.artifact_claim.is_none() {
                    return Err(Error::unsupported(
                        "PVC mounts need an artifact claim in the Kubernetes configuration",
                    ));
                }
                check_sub_path(sub_path)?;
                let vol = claim_volume(claim, &mut m.volumes);
                if matches!(mnt.source, MountSource::WriteInto(_)) {
                    m.work_mounts
                        .push(mount(&vol, target, Some(sub_path.clone()), false));
                } else if let MountSource::CopyOf(copy) = &mnt.source {
                    // A private copy: an init container copies the sealed volume into an
                    // emptyDir and checks it; the step never sees the volume itself, and
                    // starts only on a copy that matches the seal.
                    let name = format!("m-{i}");
                    m.volumes.push(empty_dir(&name));
                    m.work_mounts.push(mount(&name, target, None, false));
                    m.copy_inits.push(Container {
                        name: format!("copy-{i}"),
                        image: Some(cfg.helper_image.clone()),
                        command: Some(vec!["sh".into(), "-c".into(), COPY_SCRIPT.into()]),
                        env: Some(vec![
                            plain_env(COPY_DIGEST_ENV, copy.digest.as_str()),
                            plain_env(COPY_ARTIFACT_ENV, &copy.artifact),
                            plain_env(COPY_BUILD_ENV, &copy.build),
                        ]),
                        working_dir: Some(COPY_DIR.to_owned()),
                        volume_mounts: Some(vec![
                            mount(
                                &vol,
                                format!("{COPY_DIR}/src"),
                                Some(sub_path.clone()),
                                true,
                            ),
                            mount(&name, format!("{COPY_DIR}/dst"), None, false),
                        ]),
                        security_context: Some(restricted_context(DEFAULT_NON_ROOT_UID)),
                        ..Container::default()
                    });
                }
            }
        }
    }
    Ok(m)
}

/// The Kubernetes pod for `spec` under `cfg`.
///
/// Fails with `Invalid` for a bad name, image, mount path or a privileged request the
/// operator does not allow, and with `Unsupported` for host path mounts and PVC mounts
/// without a configured artifact claim. Never does I/O.
/// The Secret that holds the environment values of pod `pod`.
pub fn env_secret_name(pod: &str) -> String {
    format!("{pod}-env")
}

/// The Secret key of the `i`th variable (in name order). Indexed rather than named: a
/// variable name need not be a valid Secret key.
fn env_key(i: usize) -> String {
    format!("e{i}")
}

/// The Secret with the values of `spec.env` (`None` when there are none), labelled
/// like the pod. It is made before the pod and then owned by it, so the cluster's
/// garbage collector deletes it with the pod.
pub fn env_secret_manifest(spec: &PodSpec, cfg: &KubeConfig) -> Option<Secret> {
    if spec.env.is_empty() {
        return None;
    }
    let data = spec
        .env
        .values()
        .enumerate()
        .map(|(i, v)| (env_key(i), ByteString(v.clone().into_bytes())))
        .collect();
    Some(Secret {
        metadata: ObjectMeta {
            name: Some(env_secret_name(&spec.name)),
            namespace: cfg.namespace.clone(),
            labels: Some(pod_labels(spec, cfg)),
            ..ObjectMeta::default()
        },
        data: Some(data),
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}

/// The NetworkPolicy that cuts pod `pod` off the network.
pub fn network_policy_name(pod: &str) -> String {
    format!("{pod}-hermetic")
}

/// For a hermetic spec, the NetworkPolicy that denies its pod all egress and ingress
/// (`None` when the spec is not hermetic), labelled like the pod. Like the env Secret it
/// is made before the pod (so the command never runs with the network) and then owned
/// by it, so the garbage collector deletes it only once the pod is gone: deleting it
/// with the request to delete the pod would give the network back during the grace
/// period, while the command may still run.
///
/// It selects the pod by its handle label, which no other step's pod carries. Ingress
/// is denied too: policies are stateful, so a connection opened into the pod would
/// carry data out in its replies, and nothing of a step comes over the pod network
/// (exec goes through the API server and the kubelet, the helper shares the pod).
/// Policy semantics: <https://kubernetes.io/docs/concepts/services-networking/network-policies/>
/// (a policy type listed with no rules allows nothing of that direction).
///
/// Fails with `Invalid` when the spec has no handle label to select its pod by.
pub fn network_policy_manifest(spec: &PodSpec, cfg: &KubeConfig) -> Result<Option<NetworkPolicy>> {
    if !spec.hermetic {
        return Ok(None);
    }
    let handle = spec.handle().ok_or_else(|| {
        Error::invalid(format!(
            "pod {} must run without network, but has no {} label to select it by",
            spec.name,
            label::HANDLE
        ))
    })?;
    Ok(Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(network_policy_name(&spec.name)),
            namespace: cfg.namespace.clone(),
            labels: Some(pod_labels(spec, cfg)),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    label::HANDLE.to_owned(),
                    handle.to_owned(),
                )])),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
        }),
    }))
}

/// Kubernetes' recommended label for the tool that manages an object. Core's neutral
/// [`label::MANAGED_BY`] is written, selected and read back as this key, so `kubectl
/// get -l app.kubernetes.io/managed-by=jetbridge` finds our objects and clusters keep
/// the label existing pods carry.
pub(crate) const KUBE_MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// A core label key as it is written on Kubernetes objects.
pub(crate) fn kube_label_key(key: &str) -> &str {
    if key == label::MANAGED_BY {
        KUBE_MANAGED_BY
    } else {
        key
    }
}

/// Labels read from a Kubernetes object, with keys in core's terms.
pub(crate) fn core_labels(mut labels: BTreeMap<String, String>) -> BTreeMap<String, String> {
    if let Some(v) = labels.remove(KUBE_MANAGED_BY) {
        labels.insert(label::MANAGED_BY.to_owned(), v);
    }
    labels
}

/// The labels of the pod (and of its env Secret): the spec's, plus managed-by and the
/// worker, with keys as Kubernetes objects carry them.
fn pod_labels(spec: &PodSpec, cfg: &KubeConfig) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = spec
        .labels
        .iter()
        .map(|(k, v)| (kube_label_key(k).to_owned(), v.clone()))
        .collect();
    labels
        .entry(KUBE_MANAGED_BY.to_owned())
        .or_insert_with(|| label::MANAGED_BY_VALUE.to_owned());
    if let Some(w) = &cfg.worker {
        labels
            .entry(label::WORKER.to_owned())
            .or_insert_with(|| jetbridge_core::names::label_value(w));
    }
    labels
}

/// The `Pod` for `spec`.
pub fn pod_manifest(spec: &PodSpec, cfg: &KubeConfig) -> Result<Pod> {
    if !is_dns_label(&spec.name) {
        return Err(Error::invalid(format!(
            "pod name {:?} is not a DNS-1123 label",
            spec.name
        )));
    }
    if spec.image.trim().is_empty() {
        return Err(Error::invalid("the step image is empty"));
    }
    if spec.privileged && !cfg.allow_privileged {
        return Err(Error::invalid(
            "the step asks to run privileged, but allow_privileged is off in the Kubernetes configuration",
        ));
    }
    if spec.privileged && cfg.restricted {
        return Err(Error::invalid(
            "the step asks to run privileged, which the restricted profile (restricted = true) forbids",
        ));
    }
    if let Some(p) = &cfg.pause_command
        && p.is_empty()
    {
        return Err(Error::invalid("pause_command is empty"));
    }

    let workdir = working_dir(spec);
    let mounts = plan_mounts(spec, cfg, &workdir)?;

    let labels = pod_labels(spec, cfg);

    let mut volumes = vec![empty_dir(WORKDIR_VOLUME)];
    let mut init_containers = Vec::new();
    let mut main_mounts = vec![mount(WORKDIR_VOLUME, workdir.clone(), None, false)];
    let command = match &cfg.pause_command {
        Some(argv) => argv.clone(),
        None => {
            volumes.push(empty_dir(TOOLS_VOLUME));
            main_mounts.push(mount(TOOLS_VOLUME, TOOLS_DIR.to_owned(), None, true));
            // The static step-pod helper when its image is known (it is PID 1 and runs
            // every command, so the step image needs no shell, and records them in its
            // own volume); else busybox's.
            let (image, install, pause) = match &cfg.step_helper_image {
                Some(image) => {
                    volumes.push(empty_dir(RUNS_VOLUME));
                    main_mounts.push(mount(RUNS_VOLUME, RUNS_DIR.to_owned(), None, false));
                    (
                        image.clone(),
                        vec![STEP_HELPER_PATH.to_owned(), "install".into(), ".".into()],
                        vec![INSTALLED_HELPER.to_owned(), "pause".into()],
                    )
                }
                None => (
                    cfg.helper_image.clone(),
                    vec!["sh".into(), "-c".into(), PAUSE_INSTALL_SCRIPT.into()],
                    vec![format!("{TOOLS_DIR}/pause")],
                ),
            };
            init_containers.push(Container {
                name: PAUSE_INIT_CONTAINER.to_owned(),
                image: Some(image),
                command: Some(install),
                working_dir: Some(TOOLS_DIR.to_owned()),
                volume_mounts: Some(vec![mount(TOOLS_VOLUME, TOOLS_DIR.to_owned(), None, false)]),
                security_context: Some(restricted_context(DEFAULT_NON_ROOT_UID)),
                ..Container::default()
            });
            pause
        }
    };
    volumes.extend(mounts.volumes);
    init_containers.extend(mounts.copy_inits);
    main_mounts.extend(mounts.work_mounts.iter().cloned());

    // Values live in the pod's env Secret; the pod names only the variables.
    let secret = env_secret_name(&spec.name);
    let env: Vec<EnvVar> = spec
        .env
        .keys()
        .enumerate()
        .map(|(i, k)| EnvVar {
            name: k.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.clone(),
                    key: env_key(i),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect();

    let res = if spec.resources == Resources::default() {
        &cfg.default_resources
    } else {
        &spec.resources
    };

    let main_security = if spec.privileged {
        SecurityContext {
            privileged: Some(true),
            run_as_user: cfg.run_as_user,
            ..SecurityContext::default()
        }
    } else if cfg.restricted {
        restricted_context(cfg.run_as_user.unwrap_or(DEFAULT_NON_ROOT_UID))
    } else {
        // Baseline: nothing beyond the defaults, and never privileged.
        SecurityContext {
            privileged: Some(false),
            run_as_user: cfg.run_as_user,
            ..SecurityContext::default()
        }
    };

    let mut containers = vec![Container {
        name: MAIN_CONTAINER.to_owned(),
        image: Some(spec.image.clone()),
        command: Some(command),
        working_dir: Some(workdir.clone()),
        env: (!env.is_empty()).then_some(env),
        resources: resources(res),
        volume_mounts: Some(main_mounts),
        security_context: Some(main_security),
        ..Container::default()
    }];
    if spec.transfer {
        let mut helper_mounts = vec![mount(WORKDIR_VOLUME, workdir.clone(), None, false)];
        helper_mounts.extend(mounts.work_mounts);
        containers.push(Container {
            name: HELPER_CONTAINER.to_owned(),
            image: Some(cfg.helper_image.clone()),
            command: Some(vec!["sh".into(), "-c".into(), HELPER_IDLE_SCRIPT.into()]),
            working_dir: Some(workdir),
            volume_mounts: Some(helper_mounts),
            security_context: Some(restricted_context(DEFAULT_NON_ROOT_UID)),
            ..Container::default()
        });
    }

    let pod_security = PodSecurityContext {
        run_as_non_root: cfg.restricted.then_some(true),
        seccomp_profile: Some(runtime_default()),
        fs_group: cfg.fs_group,
        fs_group_change_policy: cfg.fs_group.map(|_| "OnRootMismatch".to_owned()),
        ..PodSecurityContext::default()
    };

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(spec.name.clone()),
            namespace: cfg.namespace.clone(),
            labels: Some(labels),
            annotations: (!cfg.pod_annotations.is_empty()).then(|| cfg.pod_annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(K8sPodSpec {
            containers,
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            volumes: Some(volumes),
            restart_policy: Some("Never".to_owned()),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            service_account_name: cfg.service_account.clone(),
            image_pull_secrets: (!cfg.image_pull_secrets.is_empty()).then(|| {
                cfg.image_pull_secrets
                    .iter()
                    .map(|n| LocalObjectReference { name: n.clone() })
                    .collect()
            }),
            node_selector: (!cfg.node_selector.is_empty()).then(|| cfg.node_selector.clone()),
            tolerations: (!cfg.tolerations.is_empty()).then(|| cfg.tolerations.clone()),
            security_context: Some(pod_security),
            ..K8sPodSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ports::Mount;
    use k8s_openapi::api::core::v1::Toleration;

    fn spec() -> PodSpec {
        let mut s = PodSpec::new("p-main-b1-task-0123abcd", "busybox:1.36");
        s.labels.insert(label::HANDLE.into(), "0123abcd99".into());
        s.labels.insert(label::STEP.into(), "compile".into());
        s
    }

    fn pvc(claim: &str, sub: &str) -> MountInfo {
        MountInfo::SharedVolume {
            volume: claim.into(),
            sub_path: sub.into(),
        }
    }

    fn copy_of(m: MountInfo) -> MountSource {
        MountSource::CopyOf(
            CopySource::new(m, jetbridge_core::digest::TreeDigest::new().finish())
                .with_artifact("repo", "b-7"),
        )
    }

    #[test]
    fn pod_annotations_are_set_only_when_configured() {
        let plain = pod_manifest(&spec(), &with_claim()).unwrap();
        assert!(plain.metadata.annotations.is_none());
        let mut cfg = with_claim();
        cfg.pod_annotations
            .insert("gke-gcsfuse/volumes".into(), "true".into());
        let pod = pod_manifest(&spec(), &cfg).unwrap();
        assert_eq!(
            pod.metadata
                .annotations
                .unwrap()
                .get("gke-gcsfuse/volumes")
                .map(String::as_str),
            Some("true")
        );
    }

    fn with_claim() -> KubeConfig {
        KubeConfig {
            namespace: Some("ci".into()),
            artifact_claim: Some("artifacts".into()),
            ..KubeConfig::default()
        }
    }

    fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
        let s = pod.spec.as_ref().unwrap();
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn mount_at<'a>(c: &'a Container, path: &str) -> &'a VolumeMount {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("no mount at {path} in {}", c.name))
    }

    fn volume<'a>(pod: &'a Pod, name: &str) -> &'a Volume {
        pod.spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    }

    /// Every field the "restricted" Pod Security profile checks, for one container.
    fn assert_restricted(c: &Container) {
        let sc = c.security_context.as_ref().expect("a security context");
        assert_eq!(sc.run_as_non_root, Some(true), "{}: runAsNonRoot", c.name);
        assert!(
            sc.run_as_user.is_some_and(|u| u != 0),
            "{}: runAsUser",
            c.name
        );
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{}: allowPrivilegeEscalation",
            c.name
        );
        assert_ne!(sc.privileged, Some(true), "{}: privileged", c.name);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        assert_eq!(
            caps.drop.as_deref(),
            Some(&["ALL".to_owned()][..]),
            "{}",
            c.name
        );
        assert!(
            caps.add.iter().flatten().all(|a| a == "NET_BIND_SERVICE"),
            "{}: only NET_BIND_SERVICE may be added",
            c.name
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault"),
            "{}: seccompProfile",
            c.name
        );
    }

    /// The pod-level "baseline" rules: no host namespaces, no host paths, no host ports,
    /// no unconfined seccomp, no added capabilities beyond the baseline set.
    fn assert_baseline(pod: &Pod) {
        let s = pod.spec.as_ref().unwrap();
        assert_ne!(s.host_network, Some(true));
        assert_ne!(s.host_pid, Some(true));
        assert_ne!(s.host_ipc, Some(true));
        assert!(s.volumes.iter().flatten().all(|v| v.host_path.is_none()));
        let psc = s.security_context.as_ref().unwrap();
        assert_ne!(
            psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("Unconfined")
        );
        for c in s
            .containers
            .iter()
            .chain(s.init_containers.iter().flatten())
        {
            assert!(c.ports.iter().flatten().all(|p| p.host_port.is_none()));
            if let Some(sc) = &c.security_context {
                assert!(
                    sc.capabilities
                        .as_ref()
                        .and_then(|c| c.add.as_ref())
                        .is_none()
                );
                assert_ne!(
                    sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                    Some("Unconfined")
                );
            }
        }
    }

    #[test]
    fn basic_pod_shape() {
        let mut s = spec();
        s.env.insert("GREETING".into(), "hi".into());
        s.resources = Resources::new(Some(500), Some(256 << 20));
        let cfg = KubeConfig {
            namespace: Some("ci".into()),
            image_pull_secrets: vec!["regcred".into()],
            service_account: Some("steps".into()),
            node_selector: BTreeMap::from([("pool".into(), "ci".into())]),
            tolerations: vec![Toleration {
                key: Some("ci".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            }],
            worker: Some("worker-0".into()),
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&s, &cfg).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some(s.name.as_str()));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ci"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        for (k, v) in &s.labels {
            assert_eq!(labels.get(k), Some(v));
        }
        assert_eq!(
            labels.get(KUBE_MANAGED_BY).map(String::as_str),
            Some("jetbridge")
        );
        assert_eq!(
            labels.get(label::WORKER).map(String::as_str),
            Some("worker-0")
        );
        let ps = pod.spec.as_ref().unwrap();
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.automount_service_account_token, Some(false));
        assert_eq!(ps.service_account_name.as_deref(), Some("steps"));
        assert_eq!(ps.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        assert_eq!(
            ps.node_selector.as_ref().unwrap().get("pool").unwrap(),
            "ci"
        );
        assert_eq!(ps.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(ps.containers.len(), 1, "no helper unless asked");
        let main = container(&pod, MAIN_CONTAINER);
        assert_eq!(main.image.as_deref(), Some("busybox:1.36"));
        assert_eq!(main.working_dir.as_deref(), Some("/tmp/build/0123abcd"));
        assert_eq!(
            main.command.as_deref(),
            Some(&["/.jetbridge/pause".to_owned()][..])
        );
        // The pod names the variable; its value is only in the Secret.
        let env = main.env.as_ref().unwrap();
        assert_eq!(env[0].name, "GREETING");
        assert_eq!(env[0].value, None);
        let r = env[0]
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(r.name, format!("{}-env", s.name));
        assert!(!serde_json::to_string(&pod).unwrap().contains("hi\""));
        let secret = env_secret_manifest(&s, &cfg).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some(r.name.as_str()));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(secret.metadata.labels, pod.metadata.labels);
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(secret.data.as_ref().unwrap()[&r.key].0, b"hi");
        assert!(env_secret_manifest(&spec(), &cfg).is_none());
        let r = main.resources.as_ref().unwrap();
        for q in [r.requests.as_ref().unwrap(), r.limits.as_ref().unwrap()] {
            assert_eq!(q["cpu"].0, "500m");
            assert_eq!(q["memory"].0, (256u64 << 20).to_string());
        }
        // The working directory is a writable emptyDir shared with the helper.
        assert!(volume(&pod, "workdir").empty_dir.is_some());
        assert_eq!(mount_at(main, "/tmp/build/0123abcd").name, "workdir");
        // The pause program comes from an init container of the helper image.
        let init = container(&pod, PAUSE_INIT_CONTAINER);
        assert_eq!(init.image.as_deref(), Some(DEFAULT_HELPER_IMAGE_FOR_TEST));
        assert_restricted(init);
        assert_eq!(mount_at(main, TOOLS_DIR).read_only, Some(true));
        assert_baseline(&pod);
    }

    const DEFAULT_HELPER_IMAGE_FOR_TEST: &str = crate::config::DEFAULT_HELPER_IMAGE;

    #[test]
    fn default_helper_image_is_digest_pinned() {
        let img = crate::config::DEFAULT_HELPER_IMAGE;
        let (_, digest) = img.split_once("@sha256:").expect("pinned by digest");
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn default_resources_apply_only_when_the_step_sets_none() {
        let cfg = KubeConfig {
            default_resources: Resources::new(Some(250), None),
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&spec(), &cfg).unwrap();
        let r = container(&pod, MAIN_CONTAINER).resources.clone().unwrap();
        assert_eq!(r.limits.unwrap()["cpu"].0, "250m");
        let mut s = spec();
        s.resources.memory_bytes = Some(1000);
        let pod = pod_manifest(&s, &cfg).unwrap();
        let r = container(&pod, MAIN_CONTAINER).resources.clone().unwrap();
        assert!(!r.limits.as_ref().unwrap().contains_key("cpu"));
        assert_eq!(r.limits.unwrap()["memory"].0, "1000");
        let pod = pod_manifest(&spec(), &KubeConfig::default()).unwrap();
        assert!(container(&pod, MAIN_CONTAINER).resources.is_none());
    }

    #[test]
    fn restricted_profile_field_by_field() {
        let mut s = spec();
        s.transfer = true;
        s.mounts
            .push(Mount::new("repo", copy_of(pvc("artifacts", "v-1"))));
        let cfg = KubeConfig {
            restricted: true,
            ..with_claim()
        };
        let pod = pod_manifest(&s, &cfg).unwrap();
        let ps = pod.spec.as_ref().unwrap();
        let psc = ps.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        // Restricted allows only these volume types.
        for v in ps.volumes.iter().flatten() {
            assert!(
                v.empty_dir.is_some() || v.persistent_volume_claim.is_some(),
                "volume {} is of a type restricted forbids",
                v.name
            );
        }
        for c in ps
            .containers
            .iter()
            .chain(ps.init_containers.iter().flatten())
        {
            assert_restricted(c);
        }
        assert_eq!(ps.containers.len(), 2);
        assert_eq!(ps.init_containers.as_ref().unwrap().len(), 2);
        assert_baseline(&pod);
        let main = container(&pod, MAIN_CONTAINER);
        assert_eq!(
            main.security_context.as_ref().unwrap().run_as_user,
            Some(DEFAULT_NON_ROOT_UID)
        );
        let cfg = KubeConfig {
            run_as_user: Some(1001),
            ..cfg
        };
        let pod = pod_manifest(&s, &cfg).unwrap();
        let main = container(&pod, MAIN_CONTAINER);
        assert_eq!(
            main.security_context.as_ref().unwrap().run_as_user,
            Some(1001)
        );
    }

    #[test]
    fn helper_is_restricted_even_in_baseline() {
        let mut s = spec();
        s.transfer = true;
        let pod = pod_manifest(&s, &KubeConfig::default()).unwrap();
        let helper = container(&pod, HELPER_CONTAINER);
        assert_restricted(helper);
        assert_eq!(helper.working_dir.as_deref(), Some("/tmp/build/0123abcd"));
        let main = container(&pod, MAIN_CONTAINER);
        let sc = main.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false));
        assert_ne!(
            sc.run_as_non_root,
            Some(true),
            "baseline leaves the user to the image"
        );
        assert_baseline(&pod);
    }

    #[test]
    fn privileged_needs_the_operator_flag() {
        let mut s = spec();
        s.privileged = true;
        let e = pod_manifest(&s, &KubeConfig::default()).unwrap_err();
        assert_eq!(e.kind(), jetbridge_core::ErrorKind::Invalid);
        assert!(e.message().contains("allow_privileged"), "{e}");
        let cfg = KubeConfig {
            allow_privileged: true,
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&s, &cfg).unwrap();
        let main = container(&pod, MAIN_CONTAINER);
        assert_eq!(
            main.security_context.as_ref().unwrap().privileged,
            Some(true)
        );
        let cfg = KubeConfig {
            allow_privileged: true,
            restricted: true,
            ..KubeConfig::default()
        };
        let e = pod_manifest(&s, &cfg).unwrap_err();
        assert_eq!(e.kind(), jetbridge_core::ErrorKind::Invalid);
        // Not asked: never privileged, whatever the operator allows.
        let cfg = KubeConfig {
            allow_privileged: true,
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&spec(), &cfg).unwrap();
        let main = container(&pod, MAIN_CONTAINER);
        assert_eq!(
            main.security_context.as_ref().unwrap().privileged,
            Some(false)
        );
    }

    #[test]
    fn mounts_map_to_volumes() {
        let mut s = spec();
        s.transfer = true;
        s.mounts = vec![
            Mount::new("out", MountSource::WriteInto(pvc("artifacts", "v-out"))),
            Mount::new("repo", copy_of(pvc("artifacts", "v-in"))),
            Mount::new("scratch", MountSource::Empty),
            Mount::new(
                "deps/cache",
                MountSource::Cache {
                    key: "p/j/s/deps cache".into(),
                },
            ),
        ];
        let pod = pod_manifest(&s, &with_claim()).unwrap();
        let main = container(&pod, MAIN_CONTAINER);
        let wd = "/tmp/build/0123abcd";
        // WriteInto: the claim itself, by subPath, writable.
        let out = mount_at(main, &format!("{wd}/out"));
        assert_eq!(out.sub_path.as_deref(), Some("v-out"));
        assert_ne!(out.read_only, Some(true));
        assert_eq!(
            volume(&pod, &out.name)
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "artifacts"
        );
        // CopyOf: an emptyDir filled by an init container from the read-only subPath.
        let repo = mount_at(main, &format!("{wd}/repo"));
        assert!(volume(&pod, &repo.name).empty_dir.is_some());
        let copy = pod
            .spec
            .as_ref()
            .unwrap()
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name.starts_with("copy-"))
            .unwrap();
        assert_eq!(
            copy.command.as_deref().unwrap(),
            &["sh", "-c", COPY_SCRIPT].map(String::from)[..]
        );
        let env: Vec<(&str, &str)> = copy
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or("")))
            .collect();
        let empty = jetbridge_core::digest::TreeDigest::new().finish();
        assert_eq!(
            env,
            vec![
                (COPY_DIGEST_ENV, empty.as_str()),
                (COPY_ARTIFACT_ENV, "repo"),
                (COPY_BUILD_ENV, "b-7")
            ]
        );
        let src = mount_at(copy, &format!("{COPY_DIR}/src"));
        assert_eq!(src.read_only, Some(true));
        assert_eq!(src.sub_path.as_deref(), Some("v-in"));
        assert_eq!(mount_at(copy, &format!("{COPY_DIR}/dst")).name, repo.name);
        assert_restricted(copy);
        // Empty: an emptyDir, also seen by the helper.
        let scratch = mount_at(main, &format!("{wd}/scratch"));
        assert!(volume(&pod, &scratch.name).empty_dir.is_some());
        let helper = container(&pod, HELPER_CONTAINER);
        assert_eq!(
            mount_at(helper, &format!("{wd}/scratch")).name,
            scratch.name
        );
        // Cache without a cache claim: an emptyDir.
        let cache = mount_at(main, &format!("{wd}/deps/cache"));
        assert!(volume(&pod, &cache.name).empty_dir.is_some());
        // Both PVC mounts share one volume of the claim.
        let claims = pod
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.persistent_volume_claim.is_some())
            .count();
        assert_eq!(claims, 1);
    }

    #[test]
    fn cache_uses_the_cache_claim_when_configured() {
        let mut s = spec();
        s.mounts.push(Mount::new(
            "c",
            MountSource::Cache {
                key: "../../etc".into(),
            },
        ));
        let cfg = KubeConfig {
            cache_claim: Some("caches".into()),
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&s, &cfg).unwrap();
        let m = mount_at(container(&pod, MAIN_CONTAINER), "/tmp/build/0123abcd/c");
        let sub = m.sub_path.as_deref().unwrap();
        assert_eq!(sub, cache_sub_path("../../etc"));
        assert!(sub.starts_with("caches/") && !sub.contains(".."));
        assert_eq!(
            volume(&pod, &m.name)
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "caches"
        );
        assert_ne!(cache_sub_path("a"), cache_sub_path("b"));
    }

    #[test]
    fn unsupported_and_invalid_mounts() {
        use jetbridge_core::ErrorKind;
        let mut s = spec();
        s.mounts.push(Mount::new(
            "v",
            copy_of(MountInfo::HostPath { path: "/x".into() }),
        ));
        assert_eq!(
            pod_manifest(&s, &with_claim()).unwrap_err().kind(),
            ErrorKind::Unsupported
        );
        let mut s = spec();
        s.mounts.push(Mount::new(
            "v",
            MountSource::WriteInto(pvc("artifacts", "v-1")),
        ));
        assert_eq!(
            pod_manifest(&s, &KubeConfig::default()).unwrap_err().kind(),
            ErrorKind::Unsupported,
            "no artifact claim configured"
        );
        for bad in ["", "/abs", "a/../b", "..", "a//b", "./a"] {
            let mut s = spec();
            s.mounts.push(Mount::new(bad, MountSource::Empty));
            assert_eq!(
                pod_manifest(&s, &with_claim()).unwrap_err().kind(),
                ErrorKind::Invalid,
                "{bad:?}"
            );
        }
        let mut s = spec();
        for _ in 0..2 {
            s.mounts.push(Mount::new("same", MountSource::Empty));
        }
        assert_eq!(
            pod_manifest(&s, &with_claim()).unwrap_err().kind(),
            ErrorKind::Invalid
        );
        let mut s = spec();
        s.mounts
            .push(Mount::new("v", copy_of(pvc("artifacts", "../other"))));
        assert_eq!(
            pod_manifest(&s, &with_claim()).unwrap_err().kind(),
            ErrorKind::Invalid
        );
        let s = PodSpec::new("Not_A_Name", "img");
        assert_eq!(
            pod_manifest(&s, &with_claim()).unwrap_err().kind(),
            ErrorKind::Invalid
        );
    }

    #[test]
    fn the_step_helper_image_installs_the_helper_as_pid_1() {
        let cfg = KubeConfig {
            step_helper_image: Some("ghcr.io/jetbridge/jetbridge:0.1.0".into()),
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&spec(), &cfg).unwrap();
        let spec = pod.spec.unwrap();
        let init = spec
            .init_containers
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.name == PAUSE_INIT_CONTAINER))
            .expect("the helper's init container");
        assert_eq!(
            init.image.as_deref(),
            Some("ghcr.io/jetbridge/jetbridge:0.1.0")
        );
        // No shell: the jetbridge image has none.
        assert_eq!(
            init.command.as_deref(),
            Some(&[STEP_HELPER_PATH, "install", "."].map(String::from)[..])
        );
        assert_eq!(init.working_dir.as_deref(), Some(TOOLS_DIR));
        let main = spec
            .containers
            .iter()
            .find(|c| c.name == MAIN_CONTAINER)
            .unwrap();
        assert_eq!(
            main.command.as_deref(),
            Some(&[INSTALLED_HELPER, "pause"].map(String::from)[..])
        );
        assert!(INSTALLED_HELPER.starts_with(&format!("{TOOLS_DIR}/")));
        assert_eq!(mount_at(main, TOOLS_DIR).read_only, Some(true));
        // The command records are the helper's to write.
        assert_ne!(mount_at(main, RUNS_DIR).read_only, Some(true));
    }

    #[test]
    fn pause_command_override_needs_no_init_container() {
        let cfg = KubeConfig {
            pause_command: Some(vec!["sleep".into(), "infinity".into()]),
            ..KubeConfig::default()
        };
        let pod = pod_manifest(&spec(), &cfg).unwrap();
        assert!(pod.spec.as_ref().unwrap().init_containers.is_none());
        let main = container(&pod, MAIN_CONTAINER);
        assert_eq!(
            main.command.as_deref().unwrap(),
            &["sleep".to_owned(), "infinity".to_owned()][..]
        );
    }

    #[test]
    fn working_dir_without_a_hex_handle_hashes_the_name() {
        let s = PodSpec::new("plain-name", "img");
        let wd = working_dir(&s);
        let hex8 = wd.strip_prefix("/tmp/build/").unwrap();
        assert_eq!(hex8.len(), 8);
        assert!(hex8.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(wd, working_dir(&PodSpec::new("other-name", "img")));
    }

    proptest::proptest! {
        /// Whatever the mount paths, the pod never mounts outside its working directory.
        #[test]
        fn mounts_stay_under_the_working_dir(paths in proptest::collection::vec("[a-z./]{0,12}", 0..5)) {
            let mut s = spec();
            for p in &paths {
                s.mounts.push(Mount::new(p.clone(), MountSource::Empty));
            }
            if let Ok(pod) = pod_manifest(&s, &KubeConfig::default()) {
                let main = container(&pod, MAIN_CONTAINER);
                for m in main.volume_mounts.iter().flatten() {
                    let ok = m.mount_path == TOOLS_DIR
                        || (m.mount_path.starts_with("/tmp/build/0123abcd")
                            && !m.mount_path.split('/').any(|s| s == ".."));
                    proptest::prop_assert!(ok, "{}", m.mount_path);
                }
            }
        }
    }
}

#[cfg(test)]
mod copy_script_tests {
    use std::fs;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;
    use std::process::Command;

    use jetbridge_core::digest::Digest;

    use super::{COPY_CORRUPT_EXIT, COPY_DIGEST_ENV, COPY_SCRIPT};

    /// The tree digest of `root`, walked here as a store does at seal time.
    fn digest(root: &Path) -> Digest {
        jetbridge_conformance::support::dir_digest(root)
    }

    /// Run the script in `work` (holding `src/` and an empty `dst/`); its exit code.
    fn run(work: &Path, expected: &Digest) -> i32 {
        let out = Command::new("sh")
            .args(["-c", COPY_SCRIPT])
            .current_dir(work)
            .env(COPY_DIGEST_ENV, expected.as_str())
            .output()
            .unwrap();
        out.status.code().unwrap_or(-1)
    }

    fn tricky(src: &Path) {
        fs::create_dir_all(src.join("a dir/sub")).unwrap();
        fs::create_dir_all(src.join("a-b")).unwrap();
        fs::create_dir_all(src.join("empty")).unwrap();
        fs::write(src.join("a dir/sub/f g.txt"), "spaces\n").unwrap();
        fs::write(src.join("a dir/back\\slash"), "bs").unwrap();
        fs::write(src.join("a-b/x"), vec![0u8; 70_000]).unwrap();
        fs::write(src.join("zero"), "").unwrap();
        fs::write(src.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(src.join("a-b"), fs::Permissions::from_mode(0o2750)).unwrap();
        symlink("a dir/sub/f g.txt", src.join("link one")).unwrap();
        symlink("../zero", src.join("a dir/up")).unwrap();
    }

    #[test]
    fn the_script_computes_the_stores_tree_digest() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        tricky(&src);
        fs::create_dir(t.path().join("dst")).unwrap();
        let sealed = digest(&src);
        assert_eq!(run(t.path(), &sealed), 0);
        assert_eq!(
            digest(&t.path().join("dst")),
            sealed,
            "cp -a keeps the tree"
        );
    }

    #[test]
    fn any_change_makes_the_script_exit_corrupt() {
        type Tamper = fn(&Path);
        let tampers: &[Tamper] = &[
            |s| fs::write(s.join("a-b/x"), vec![1u8; 70_000]).unwrap(),
            |s| fs::set_permissions(s.join("zero"), fs::Permissions::from_mode(0o600)).unwrap(),
            |s| fs::write(s.join("empty/new"), "").unwrap(),
            |s| fs::remove_file(s.join("a dir/back\\slash")).unwrap(),
            |s| {
                fs::remove_file(s.join("link one")).unwrap();
                symlink("zero", s.join("link one")).unwrap();
            },
            |s| fs::create_dir(s.join("empty/d")).unwrap(),
        ];
        for (i, tamper) in tampers.iter().enumerate() {
            let t = tempfile::tempdir().unwrap();
            let src = t.path().join("src");
            tricky(&src);
            let sealed = digest(&src);
            tamper(&src);
            fs::create_dir(t.path().join("dst")).unwrap();
            assert_eq!(run(t.path(), &sealed), COPY_CORRUPT_EXIT, "tamper {i}");
        }
    }
}
