//! What a submission becomes: validated once when it is accepted, stored in the queue
//! as a [`BuildSpec`], and parsed again by whichever replica claims it.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use base64::Engine as _;
use jetbridge_core::images::ImageResolver;
use jetbridge_core::plan::{Location, Pipeline, PlanError, Vars, parse_pipeline_with_inputs};
use serde::{Deserialize, Serialize};

use crate::api::{LocationView, SubmitRequest};

/// The file name messages use when a submission names none.
pub const DEFAULT_FILE: &str = "pipeline.yml";

/// What the queue keeps of a submission: everything a replica needs to run it.
/// `Debug` shows the names of the variables, never their values.
#[derive(Clone, Serialize, Deserialize)]
pub struct BuildSpec {
    /// The pipeline's name for messages.
    pub file: String,
    /// Its YAML text.
    pub pipeline: String,
    /// The job.
    pub job: String,
    /// Variables, in clear: only while the build is in this process (a queue that
    /// stores builds gets [`Self::sealed_vars`] instead).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// The variables sealed with the servers' key ([`crate::secret::VarsKey`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_vars: Option<String>,
    /// A plain tar of the `type: local` directories.
    #[serde(default, with = "b64_opt")]
    pub bundle: Option<Vec<u8>>,
    /// Input directories as plain tars, by artifact name.
    #[serde(default, with = "b64_map")]
    pub inputs: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for BuildSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSpec")
            .field("file", &self.file)
            .field("job", &self.job)
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("sealed_vars", &self.sealed_vars.is_some())
            .field("inputs", &self.inputs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejected {
    /// For a person: what is wrong and what to do.
    pub message: String,
    /// Where in the pipeline, when the plan is at fault.
    pub location: Option<(String, u64, u64)>,
}

impl Rejected {
    fn new(message: impl Into<String>) -> Self {
        Rejected {
            message: message.into(),
            location: None,
        }
    }

    /// Refused for what stands at `at` in the pipeline (a known place, when it has one).
    fn at(at: &Location, message: String) -> Self {
        Rejected {
            message,
            location: (at.line > 0).then(|| (at.file.clone(), at.line as u64, at.column as u64)),
        }
    }

    fn plan(e: PlanError) -> Self {
        let mut e = e;
        if let Some(name) = e.unfilled.clone() {
            e.hint = Some(format!(
                "give it in the submission's `vars` (`jetbridge submit --var {name}=...`)"
            ));
        }
        Rejected::at(&e.location, e.to_string())
    }

    /// The location as the API shows it.
    pub fn location_view(&self) -> Option<LocationView> {
        self.location
            .as_ref()
            .map(|(file, line, column)| LocationView {
                file: file.clone(),
                line: *line,
                column: *column,
            })
    }
}

/// What the server allows in submissions.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Whether `type: local` resource types may run (their scripts run on the server's
    /// host).
    pub allow_local_resources: bool,
    /// Whether the backend runs steps on this host (only then can `type: local` run).
    pub local_backend: bool,
}

impl BuildSpec {
    /// Check a submission the way `jetbridge validate` and `run` do, and decode its
    /// uploads. The job is the named one or the pipeline's only one.
    pub fn accept(req: SubmitRequest, policy: Policy) -> Result<(Self, Pipeline), Rejected> {
        let file = req
            .file
            .clone()
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| DEFAULT_FILE.to_owned());
        if file.len() > 255 || file.chars().any(char::is_control) {
            return Err(Rejected::new(
                "`file` names the pipeline in messages: at most 255 characters, with no \
                 control characters",
            ));
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let bundle = match &req.bundle {
            Some(b) => Some(
                b64.decode(b)
                    .map_err(|e| Rejected::new(format!("`bundle` is not valid base64: {e}")))?,
            ),
            None => None,
        };
        let mut inputs = BTreeMap::new();
        for (name, data) in &req.inputs {
            if name.is_empty() || name.contains('/') {
                return Err(Rejected::new(format!(
                    "input {name:?}: an input's name is an artifact name, with no `/`"
                )));
            }
            let tar = b64
                .decode(data)
                .map_err(|e| Rejected::new(format!("input {name:?} is not valid base64: {e}")))?;
            inputs.insert(name.clone(), tar);
        }
        let spec = BuildSpec {
            file,
            pipeline: req.pipeline,
            job: req.job.unwrap_or_default(),
            vars: req.vars,
            sealed_vars: None,
            bundle,
            inputs,
        };
        let (spec, pipeline) = spec.resolve_job()?;
        spec.check_local_types(&pipeline, policy)?;
        Ok((spec, pipeline))
    }

    /// Replace the variables in clear by their sealed form.
    pub fn seal_vars(&mut self, key: &crate::secret::VarsKey) -> Result<(), String> {
        if self.vars.is_empty() {
            return Ok(());
        }
        let plain = serde_json::to_vec(&self.vars).map_err(|e| e.to_string())?;
        self.sealed_vars = Some(key.seal(&plain)?);
        self.vars.clear();
        Ok(())
    }

    /// Bring sealed variables back into clear (in this process only).
    pub fn open_vars(&mut self, key: Option<&crate::secret::VarsKey>) -> Result<(), String> {
        let Some(sealed) = self.sealed_vars.take() else {
            return Ok(());
        };
        let key = key.ok_or_else(|| {
            "the build's variables are sealed and this replica has no --vars-key-file".to_owned()
        })?;
        self.vars = serde_json::from_slice(&key.open(&sealed)?)
            .map_err(|e| format!("the sealed variables do not read back: {e}"))?;
        Ok(())
    }

    /// The pipeline, parsed with the spec's variables.
    pub fn parse(&self) -> Result<Pipeline, Rejected> {
        let mut vars = Vars::new();
        for (k, v) in &self.vars {
            vars.insert(k.clone(), v.clone());
        }
        parse_pipeline_with_inputs(
            &self.pipeline,
            &self.file,
            &vars,
            self.inputs.keys().cloned(),
        )
        .map_err(Rejected::plan)
    }

    fn resolve_job(mut self) -> Result<(Self, Pipeline), Rejected> {
        let pipeline = self.parse()?;
        let names = || {
            pipeline
                .jobs
                .iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.job.is_empty() {
            match pipeline.jobs.as_slice() {
                [only] => self.job = only.name.clone(),
                jobs => {
                    return Err(Rejected::new(format!(
                        "the pipeline has {} jobs; choose one with `job` ({})",
                        jobs.len(),
                        names()
                    )));
                }
            }
        } else if pipeline.job(&self.job).is_none() {
            return Err(Rejected::new(format!(
                "the pipeline has no job {:?}; its jobs: {}",
                self.job,
                names()
            )));
        }
        Ok((self, pipeline))
    }

    /// What this server cannot run, refused with its place before the build is queued
    /// rather than failing later as a step: on a backend of host processes, a resource
    /// image and a `hermetic` task. (`set_pipeline` steps are run: the server records
    /// their pipelines.)
    pub fn check_runnable(
        &self,
        pipeline: &Pipeline,
        local_backend: bool,
        images: &ImageResolver,
    ) -> Result<(), Rejected> {
        let Some(job) = pipeline.job(&self.job) else {
            return Ok(());
        };
        if local_backend
            && let Some((r, image)) = images.unrunnable_image_resource(pipeline, job, |dir| {
                std::path::Path::new(dir).join("check").is_file()
            })
        {
            return Err(Rejected::at(
                &r.location,
                format!(
                    "{}: resource {:?} has type {:?}, whose scripts run in the image {image}; \
                     this server's backend runs steps as processes on its host and cannot run \
                     a resource image: run the server with --backend kube, or give the resource \
                     a resource type of `type: local` whose source.path holds its scripts",
                    r.location, r.name, r.type_
                ),
            ));
        }
        if local_backend
            && let Some(step) = job.hermetic_step()
            && let jetbridge_core::plan::StepKind::Task(t) = &step.kind
        {
            return Err(Rejected::at(
                &step.location,
                format!(
                    "{}: task {:?} asks for `hermetic: true` (no network), and this server's \
                     backend runs steps as processes on its host, which it cannot cut off the \
                     network: run the server with --backend kube (each hermetic task's pod gets \
                     a NetworkPolicy that denies it all traffic), or set `hermetic: false`",
                    step.location, t.name
                ),
            ));
        }
        Ok(())
    }

    /// `type: local` paths must stay inside the upload, and run only when allowed.
    fn check_local_types(&self, pipeline: &Pipeline, policy: Policy) -> Result<(), Rejected> {
        for rt in pipeline
            .resource_types
            .iter()
            .filter(|t| t.type_ == "local")
        {
            let at = |msg: String| {
                Rejected::at(
                    &rt.location,
                    format!("{}: resource type {:?} {msg}", rt.location, rt.name),
                )
            };
            if !policy.local_backend {
                return Err(at(
                    "is `type: local`, which runs only on the local backend; \
                     give it a `registry-image` type with the image of the resource"
                        .into(),
                ));
            }
            if !policy.allow_local_resources {
                return Err(at(
                    "is `type: local`, whose scripts would run on the server's \
                     host; this server does not allow that (start it with \
                     --allow-local-resources)"
                        .into(),
                ));
            }
            let path = rt.source.get("path").and_then(|v| v.as_str()).unwrap_or("");
            if !is_inner_path(path) {
                return Err(at(format!(
                    "has `source.path: {path:?}`; on a server it must be a relative path \
                     inside the uploaded bundle, with no `..`"
                )));
            }
            if self.bundle.is_none() {
                return Err(at(format!(
                    "needs the directory {path:?}, but the submission has no `bundle` \
                     (`jetbridge submit` uploads it)"
                )));
            }
        }
        Ok(())
    }
}

/// A relative path with only normal components.
pub fn is_inner_path(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

mod b64_opt {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let v: Option<String> = Option::deserialize(d)?;
        v.map(|s| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

mod b64_map {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        v: &BTreeMap<String, Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        s.collect_map(v.iter().map(|(k, b)| (k, b64.encode(b))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                b64.decode(v)
                    .map(|b| (k, b))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pipeline: &str) -> SubmitRequest {
        SubmitRequest {
            pipeline: pipeline.to_owned(),
            file: Some("p.yml".into()),
            job: None,
            vars: BTreeMap::new(),
            bundle: None,
            inputs: BTreeMap::new(),
        }
    }

    const POLICY: Policy = Policy {
        allow_local_resources: true,
        local_backend: true,
    };

    #[test]
    fn paths_that_leave_the_bundle_are_not_inner() {
        for bad in ["", "/etc", "../x", "a/../../b", "a/.."] {
            assert!(!is_inner_path(bad), "{bad}");
        }
        for good in ["a", "resources/greeting", "./a/b"] {
            assert!(is_inner_path(good), "{good}");
        }
    }

    #[test]
    fn a_plan_error_keeps_its_location() {
        let e = BuildSpec::accept(req("jobs:\n- name: a\n  plan:\n  - bogus: 1\n"), POLICY)
            .unwrap_err();
        let (file, line, _) = e.location.clone().expect("a location");
        assert_eq!((file.as_str(), line), ("p.yml", 4));
        assert!(e.message.starts_with("p.yml:4:"), "{}", e.message);
    }

    #[test]
    fn the_only_job_is_chosen_and_an_unknown_one_is_refused() {
        let text = "jobs:\n- name: a\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: 'true'}}\n";
        let (spec, _) = BuildSpec::accept(req(text), POLICY).unwrap();
        assert_eq!(spec.job, "a");
        let mut r = req(text);
        r.job = Some("b".into());
        let e = BuildSpec::accept(r, POLICY).unwrap_err();
        assert!(e.message.contains("no job \"b\""), "{}", e.message);
    }

    #[test]
    fn local_types_need_permission_an_inner_path_and_a_bundle() {
        let text = |path: &str| {
            format!(
                "resource_types:\n- name: g\n  type: local\n  source: {{path: {path}}}\n\
                 resources:\n- name: m\n  type: g\n  source: {{}}\n\
                 jobs:\n- name: a\n  plan:\n  - get: m\n"
            )
        };
        let no = Policy {
            allow_local_resources: false,
            local_backend: true,
        };
        let e = BuildSpec::accept(req(&text("r/g")), no).unwrap_err();
        assert!(
            e.message.contains("--allow-local-resources"),
            "{}",
            e.message
        );
        let e = BuildSpec::accept(req(&text("../g")), POLICY).unwrap_err();
        assert!(e.message.contains("no `..`"), "{}", e.message);
        let e = BuildSpec::accept(req(&text("r/g")), POLICY).unwrap_err();
        assert!(e.message.contains("no `bundle`"), "{}", e.message);
        let mut r = req(&text("r/g"));
        r.bundle = Some(String::new());
        assert!(BuildSpec::accept(r, POLICY).is_ok());
    }

    #[test]
    fn specs_round_trip_through_their_stored_form() {
        let text = "jobs:\n- name: a\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: 'true'}}\n";
        let mut r = req(text);
        r.inputs.insert("src".into(), "aGk=".into());
        let (spec, _) = BuildSpec::accept(r, POLICY).unwrap();
        let stored = serde_json::to_vec(&spec).unwrap();
        let back: BuildSpec = serde_json::from_slice(&stored).unwrap();
        assert_eq!(back.inputs["src"], b"hi");
        assert_eq!(back.job, "a");
    }

    #[test]
    fn sealed_vars_are_not_stored_in_clear_and_open_again() {
        let text = "jobs:\n- name: a\n  plan:\n  - task: t\n    config: {platform: linux, run: {path: 'true'}}\n";
        let mut r = req(text);
        r.vars.insert("token".into(), "s3cr3t-value".into());
        let (mut spec, _) = BuildSpec::accept(r, POLICY).unwrap();
        let key = crate::secret::VarsKey::from_text("0123456789abcdef0123456789abcdef").unwrap();
        spec.seal_vars(&key).unwrap();
        let stored = String::from_utf8(serde_json::to_vec(&spec).unwrap()).unwrap();
        assert!(!stored.contains("s3cr3t-value"), "{stored}");
        let mut back: BuildSpec = serde_json::from_str(&stored).unwrap();
        assert!(
            back.open_vars(None)
                .unwrap_err()
                .contains("--vars-key-file")
        );
        let mut back2: BuildSpec = serde_json::from_str(&stored).unwrap();
        back2.open_vars(Some(&key)).unwrap();
        assert_eq!(back2.vars["token"], "s3cr3t-value");
    }
}
