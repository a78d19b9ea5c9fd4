//! Identifiers, pod names and labels.
//!
//! Pod names follow `<pipeline>-<job>-b<build>-<type>-<8hex>` (check pods
//! `chk-<resource>-<8hex>`): always a DNS-1123 label of at most 63 characters. The
//! 8 hex digits come from the step handle, so two steps with different handles get
//! different names; the readable prefix is shortened to make room, never the suffix.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest DNS-1123 label and label value.
pub const MAX_LABEL_LEN: usize = 63;

/// Label keys jetbridge puts on every pod it creates.
pub mod label {
    /// Marks pods jetbridge owns; the reaper looks only at these. Adapters may map it
    /// to their platform's own convention (the Kubernetes adapter writes Kubernetes'
    /// recommended `app.kubernetes.io/managed-by`).
    pub const MANAGED_BY: &str = "jetbridge.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "jetbridge";
    /// Pipeline name.
    pub const PIPELINE: &str = "jetbridge.io/pipeline";
    /// Job name.
    pub const JOB: &str = "jetbridge.io/job";
    /// Build number.
    pub const BUILD: &str = "jetbridge.io/build";
    /// Step name.
    pub const STEP: &str = "jetbridge.io/step";
    /// Step type (get, put, task, check).
    pub const STEP_TYPE: &str = "jetbridge.io/type";
    /// The step handle: adoption on re-create and reaping key on it.
    pub const HANDLE: &str = "jetbridge.io/handle";
    /// The worker that owns the pod.
    pub const WORKER: &str = "jetbridge.io/worker";
}

fn random_hex32() -> String {
    let id = uuid::Uuid::new_v4();
    hex::encode(&id.as_bytes()[..16])
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A volume in a [`VolumeStore`](crate::ports::VolumeStore): lowercase hex and `-`,
    /// 1 to 63 characters, safe as a path segment and as a Kubernetes subPath.
    VolumeHandle
);
string_id!(
    /// A step execution; its first 8 hex digits end the pod name.
    StepHandle
);
string_id!(
    /// An artifact record in the [`ArtifactRegistry`](crate::ports::ArtifactRegistry).
    ArtifactId
);

fn check_handle(kind: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{kind} {s:?} is not valid: use 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        )))
    }
}

impl VolumeHandle {
    /// A fresh random handle.
    pub fn random() -> Self {
        VolumeHandle(format!("v-{}", random_hex32()))
    }
    /// Parse and validate.
    pub fn parse(s: &str) -> Result<Self> {
        check_handle("volume handle", s)?;
        Ok(VolumeHandle(s.to_owned()))
    }
}

impl StepHandle {
    /// A fresh random handle (32 hex digits).
    pub fn random() -> Self {
        StepHandle(random_hex32())
    }
    /// Parse and validate: at least 8 lowercase hex digits first, then handle characters.
    pub fn parse(s: &str) -> Result<Self> {
        check_handle("step handle", s)?;
        if s.len() < 8 || !s.bytes().take(8).all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::invalid(format!(
                "step handle {s:?} must start with 8 lowercase hex digits"
            )));
        }
        Ok(StepHandle(s.to_owned()))
    }
    /// The 8 hex digits that end pod names.
    pub fn short(&self) -> &str {
        &self.0[..8]
    }
}

impl ArtifactId {
    /// A fresh random id.
    pub fn random() -> Self {
        ArtifactId(uuid::Uuid::new_v4().to_string())
    }
    /// Wrap an existing id (any non-empty string of at most 128 characters).
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > 128 {
            return Err(Error::invalid(format!("artifact id {s:?} is not valid")));
        }
        Ok(ArtifactId(s.to_owned()))
    }
}

/// Reduce `s` to lowercase `[a-z0-9-]`, collapsing runs of anything else to one `-`,
/// trimming `-` at both ends. May return an empty string.
pub fn dns_fragment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut dash = false;
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// Whether `s` is a DNS-1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Build a pod name from readable parts and a handle.
///
/// Each part is reduced to DNS characters; parts are shortened from the longest
/// down until the whole fits 63 characters with `-<8hex>` at the end.
fn pod_name_from(parts: &[String], handle: &StepHandle) -> String {
    let suffix = handle.short();
    let budget = MAX_LABEL_LEN - suffix.len() - 1;
    let mut parts: Vec<String> = parts
        .iter()
        .map(|p| dns_fragment(p))
        .filter(|p| !p.is_empty())
        .collect();
    let total = |ps: &Vec<String>| ps.iter().map(|p| p.len() + 1).sum::<usize>();
    while total(&parts) > budget {
        // Shorten the longest part by one; drop it if it becomes empty.
        let (i, _) = parts
            .iter()
            .enumerate()
            .max_by_key(|(_, p)| p.len())
            .expect("non-empty while over budget");
        parts[i].pop();
        while parts[i].ends_with('-') {
            parts[i].pop();
        }
        if parts[i].is_empty() {
            parts.remove(i);
        }
    }
    let mut name = String::with_capacity(MAX_LABEL_LEN);
    for p in &parts {
        name.push_str(p);
        name.push('-');
    }
    name.push_str(suffix);
    name
}

/// The pod name of a build step: `<pipeline>-<job>-b<build>-<type>-<8hex>`.
pub fn step_pod_name(
    pipeline: &str,
    job: &str,
    build: u64,
    step_type: &str,
    handle: &StepHandle,
) -> String {
    pod_name_from(
        &[
            pipeline.to_owned(),
            job.to_owned(),
            format!("b{build}"),
            step_type.to_owned(),
        ],
        handle,
    )
}

/// The pod name of a resource check: `chk-<resource>-<8hex>`.
pub fn check_pod_name(resource: &str, handle: &StepHandle) -> String {
    pod_name_from(&["chk".to_owned(), resource.to_owned()], handle)
}

/// The labels that select every pod (and what the pod adapter keeps beside it) of
/// `worker`.
pub fn worker_selector(worker: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            label::MANAGED_BY.to_owned(),
            label::MANAGED_BY_VALUE.to_owned(),
        ),
        (label::WORKER.to_owned(), label_value(worker)),
    ])
}

/// Make `s` a valid label value: at most 63 of `[A-Za-z0-9-_.]`, alphanumeric at both
/// ends (empty is valid). Other characters become `_`. A value too long to fit keeps
/// its first 54 characters and gets 8 hex digits of its digest: selectors (a worker's
/// pods, a step's handle) must never match two values that share a long prefix.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = v.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_LABEL_LEN {
        return trimmed.to_owned();
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(s.as_bytes());
    let suffix: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // The sanitised value is ASCII, so byte and char positions agree.
    let prefix = trimmed[..MAX_LABEL_LEN - suffix.len() - 1]
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    format!("{prefix}-{suffix}")
}

/// Whether `s` is a valid label value.
pub fn is_label_value(s: &str) -> bool {
    s.is_empty()
        || (s.len() <= MAX_LABEL_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric())
}

/// Where a step pod comes from; turned into its labels by [`StepIdentity::labels`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepIdentity {
    /// Pipeline name.
    pub pipeline: String,
    /// Job name.
    pub job: String,
    /// Build number.
    pub build: u64,
    /// Step name (resource or task name).
    pub step: String,
    /// `get`, `put`, `task` or `check`.
    pub step_type: String,
    /// Unique handle of this execution.
    pub handle: StepHandle,
    /// The worker that owns the pod.
    pub worker: String,
}

impl StepIdentity {
    /// The pod name for this step.
    pub fn pod_name(&self) -> String {
        if self.step_type == "check" {
            check_pod_name(&self.step, &self.handle)
        } else {
            step_pod_name(
                &self.pipeline,
                &self.job,
                self.build,
                &self.step_type,
                &self.handle,
            )
        }
    }

    /// The labels for this step's pod, sanitised to label rules.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(label::MANAGED_BY.into(), label::MANAGED_BY_VALUE.into());
        l.insert(label::PIPELINE.into(), label_value(&self.pipeline));
        l.insert(label::JOB.into(), label_value(&self.job));
        l.insert(label::BUILD.into(), self.build.to_string());
        l.insert(label::STEP.into(), label_value(&self.step));
        l.insert(label::STEP_TYPE.into(), label_value(&self.step_type));
        l.insert(label::HANDLE.into(), label_value(self.handle.as_str()));
        l.insert(label::WORKER.into(), label_value(&self.worker));
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn handle(h: &str) -> StepHandle {
        StepHandle::parse(h).unwrap()
    }

    #[test]
    fn readable_name() {
        let n = step_pod_name(
            "My Pipeline",
            "unit_tests",
            42,
            "task",
            &handle("deadbeef00"),
        );
        assert_eq!(n, "my-pipeline-unit-tests-b42-task-deadbeef");
        assert_eq!(
            check_pod_name("git-repo", &handle("0123abcd")),
            "chk-git-repo-0123abcd"
        );
    }

    #[test]
    fn long_parts_are_shortened_not_the_suffix() {
        let n = step_pod_name(
            &"p".repeat(100),
            &"j".repeat(100),
            7,
            "get",
            &handle("abcdef01"),
        );
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-abcdef01"));
        assert!(n.contains("-b7-get-"));
    }

    #[test]
    fn label_values_are_sanitised() {
        assert_eq!(label_value("my pipeline/x"), "my_pipeline_x");
        assert_eq!(label_value("-a-"), "a");
        assert!(is_label_value(&label_value(&"x".repeat(80))));
    }

    #[test]
    fn long_values_sharing_a_prefix_stay_distinct() {
        // Two workers on a host with a long name: their first 63 characters agree.
        let host = "ci-runner-pool-a.europe-west4-b.c.example-ci-project-1234.internal";
        assert!(
            host.len() >= MAX_LABEL_LEN,
            "the two differ only past the cut"
        );
        let (a, b) = (format!("{host}-101"), format!("{host}-202"));
        let (la, lb) = (label_value(&a), label_value(&b));
        assert_ne!(la, lb);
        assert!(is_label_value(&la) && is_label_value(&lb), "{la} {lb}");
        assert!(la.len() <= MAX_LABEL_LEN, "{la}");
        assert!(la.starts_with("ci-runner-pool-a.europe-west4-b"), "{la}");
        // Stable: the same input, the same label.
        assert_eq!(label_value(&a), la);
        // Short values are untouched.
        assert_eq!(label_value("ci-runner-1"), "ci-runner-1");
    }

    #[test]
    fn handles_validate() {
        assert!(VolumeHandle::parse("v-abc").is_ok());
        assert!(VolumeHandle::parse("../x").is_err());
        assert!(VolumeHandle::parse("").is_err());
        assert!(StepHandle::parse("xyz").is_err());
        assert!(is_dns_label(VolumeHandle::random().as_str()));
    }

    proptest! {
        #[test]
        fn pod_names_are_dns_labels(p in ".{0,80}", j in ".{0,80}", b in any::<u64>(), t in "(get|put|task|[a-z]{0,20})") {
            let h = StepHandle::random();
            let n = step_pod_name(&p, &j, b, &t, &h);
            prop_assert!(is_dns_label(&n), "{n:?}");
            prop_assert!(n.ends_with(h.short()));
            let c = check_pod_name(&p, &h);
            prop_assert!(is_dns_label(&c), "{c:?}");
        }

        #[test]
        fn distinct_handles_give_distinct_names(p in ".{0,80}", j in ".{0,80}", b in any::<u64>(), a in "[0-9a-f]{8}", c in "[0-9a-f]{8}") {
            prop_assume!(a != c);
            let n1 = step_pod_name(&p, &j, b, "task", &handle(&a));
            let n2 = step_pod_name(&p, &j, b, "task", &handle(&c));
            prop_assert_ne!(n1, n2);
        }

        #[test]
        fn labels_are_valid(p in ".{0,100}", j in ".{0,100}", s in ".{0,100}", w in ".{0,100}") {
            let id = StepIdentity { pipeline: p, job: j, build: 1, step: s, step_type: "task".into(), handle: StepHandle::random(), worker: w };
            for (k, v) in id.labels() {
                prop_assert!(is_label_value(&v), "{k}={v:?}");
            }
        }
    }
}
