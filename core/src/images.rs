//! Image resolution for resource types and tasks.
//!
//! Which image (or host directory) implements a resource type, and which image a task
//! runs in. Pure functions of the pipeline and the configuration: nothing here pulls an
//! image or reads a directory.
//!
//! - A base type (`time`, `git`, `registry-image`, `s3`, `docker-image`, `pool`,
//!   `semver`, `mock`) runs in `concourse/<type>-resource`, unless an override names
//!   another image ([`ImageResolver::with_override`], which can also add types).
//! - A declared resource type of type `registry-image` or `docker-image` runs in
//!   `repository[:tag]` from its `source`. A declared type overrides a base type of the
//!   same name.
//! - A declared resource type of type `local` with `source: {path: DIR}` runs the
//!   scripts `DIR/check`, `DIR/in` and `DIR/out` on the host; a relative `DIR` is taken
//!   from the pipeline file's directory ([`ImageResolver::with_base_dir`]).
//! - A task runs in its `image_resource`'s `repository[:tag]`, or in the default task
//!   image (`busybox:1.36` unless configured). An `image_resource` of type `mock` runs
//!   in the image of the `mock` type (Concourse's mock resource mirrors itself as an
//!   image): an override of `mock`, else `concourse/mock-resource`.
//! - A type the binary implements itself on the host ([`ImageResolver::with_local_type`],
//!   the built-in `mock` on the local backend) runs there, unless the pipeline declares
//!   a type of that name. A built-in type without an image on this backend
//!   ([`ImageResolver::with_missing_mock_image`]) is an error naming the setting to give.
//!
//! A registry prefix (e.g. `registry.example.com/mirror/`) is put in front of every
//! image derived from the pipeline or the defaults (base types, declared types, task
//! images) so pulls can go through a mirror. Images given by [`ImageResolver::with_override`]
//! are used exactly as given: whoever configures them names the full reference.

use std::collections::BTreeMap;

use crate::plan::{Job, Pipeline, Resource, StepKind, TaskConfig, TaskSource};
use crate::{Error, ErrorKind, Result};

/// The base resource types and their images, before any override or prefix.
pub const BASE_IMAGES: &[(&str, &str)] = &[
    ("time", "concourse/time-resource"),
    ("git", "concourse/git-resource"),
    ("registry-image", "concourse/registry-image-resource"),
    ("s3", "concourse/s3-resource"),
    ("docker-image", "concourse/docker-image-resource"),
    ("pool", "concourse/pool-resource"),
    ("semver", "concourse/semver-resource"),
    ("mock", "concourse/mock-resource"),
];

/// Where the resource scripts live inside a resource image.
pub const RESOURCE_SCRIPTS_DIR: &str = "/opt/resource";

/// The built-in test resource type, also usable as a task's `image_resource` type.
pub const MOCK_TYPE: &str = "mock";

/// The task image used when a task has no `image_resource`, unless configured.
pub const DEFAULT_TASK_IMAGE: &str = "busybox:1.36";

/// What runs a resource type's `check`, `in` and `out`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedImage {
    /// A container image with the scripts in `scripts_dir`.
    Image {
        /// Image reference, e.g. `concourse/git-resource` or `registry/x:1.2`.
        image: String,
        /// Directory of `check`, `in` and `out` in the image (`/opt/resource`).
        scripts_dir: String,
    },
    /// Scripts `dir/check`, `dir/in`, `dir/out` run on the host, no container.
    Local {
        /// The directory (the pipeline's base directory joined with `source.path`).
        dir: String,
    },
}

/// Resolves resource types and task configs to images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageResolver {
    overrides: BTreeMap<String, String>,
    registry_prefix: String,
    default_task_image: String,
    base_dir: String,
    scripts_dir: String,
    local_types: BTreeMap<String, String>,
    mock_missing: Option<String>,
}

impl Default for ImageResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageResolver {
    /// The base types, no prefix, `busybox:1.36` for tasks, base directory `.`.
    pub fn new() -> Self {
        ImageResolver {
            overrides: BTreeMap::new(),
            registry_prefix: String::new(),
            default_task_image: DEFAULT_TASK_IMAGE.to_owned(),
            base_dir: ".".to_owned(),
            scripts_dir: RESOURCE_SCRIPTS_DIR.to_owned(),
            local_types: BTreeMap::new(),
            mock_missing: None,
        }
    }

    /// Run resource type `type_` from the host directory `dir` (its `check`, `in` and
    /// `out`), before any override or base image: for types the binary implements
    /// itself where steps are host processes. A type declared in the pipeline wins.
    pub fn with_local_type(mut self, type_: impl Into<String>, dir: impl Into<String>) -> Self {
        self.local_types.insert(type_.into(), dir.into());
        self
    }

    /// The `mock` type and `mock` task images run in `image`, used as given.
    pub fn with_mock_image(self, image: impl Into<String>) -> Self {
        self.with_override(MOCK_TYPE, image)
    }

    /// On a backend that needs a real image for `mock` and was given none: resolving
    /// the `mock` type or a `mock` task image is an [`ErrorKind::Invalid`] error ending
    /// with `hint` (which names the setting), instead of a pull of an image that is
    /// not jetbridge's own mock. An override or a declared type still wins.
    pub fn with_missing_mock_image(mut self, hint: impl Into<String>) -> Self {
        self.mock_missing = Some(hint.into());
        self
    }

    fn missing_mock(&self, what: &str) -> Option<Error> {
        let hint = self.mock_missing.as_ref()?;
        if self.overrides.contains_key(MOCK_TYPE) || self.local_types.contains_key(MOCK_TYPE) {
            return None;
        }
        Some(Error::new(
            ErrorKind::Invalid,
            format!("{what} needs an image: {hint}"),
        ))
    }

    /// Run resource type `type_` (a base type or a new one) in `image`, used as given.
    /// A resource type declared in the pipeline still wins over this.
    pub fn with_override(mut self, type_: impl Into<String>, image: impl Into<String>) -> Self {
        self.overrides.insert(type_.into(), image.into());
        self
    }

    /// Put `prefix` in front of derived images (e.g. `registry.example.com/mirror/`;
    /// a missing trailing `/` is added). Empty: no prefix.
    pub fn with_registry_prefix(mut self, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        self.registry_prefix = prefix;
        self
    }

    /// The image of tasks without `image_resource`.
    pub fn with_default_task_image(mut self, image: impl Into<String>) -> Self {
        self.default_task_image = image.into();
        self
    }

    /// The directory relative `local` resource type paths are taken from: the
    /// directory of the pipeline file.
    pub fn with_base_dir(mut self, dir: impl Into<String>) -> Self {
        self.base_dir = dir.into();
        self
    }

    fn prefixed(&self, image: &str) -> String {
        if self.registry_prefix.is_empty() || image.starts_with(&self.registry_prefix) {
            image.to_owned()
        } else {
            format!("{}{image}", self.registry_prefix)
        }
    }

    /// Where resource images keep `check`, `in` and `out` (default `/opt/resource`).
    /// Only a simulator that runs commands on the host, or images built differently,
    /// need another value.
    pub fn with_scripts_dir(mut self, dir: impl Into<String>) -> Self {
        self.scripts_dir = dir.into();
        self
    }

    fn in_image(&self, image: String) -> ResolvedImage {
        ResolvedImage::Image {
            image,
            scripts_dir: self.scripts_dir.clone(),
        }
    }

    /// What runs the scripts of resource type `type_name` in `pipeline`.
    ///
    /// Errors: [`ErrorKind::NotFound`] for a type that is neither declared, overridden
    /// nor a base type; [`ErrorKind::Invalid`] for a declared type whose `source` lacks
    /// `repository` (or `path` for `local`) or whose type cannot provide a resource
    /// type.
    pub fn resolve_type(&self, pipeline: &Pipeline, type_name: &str) -> Result<ResolvedImage> {
        if let Some(rt) = pipeline.resource_type(type_name) {
            let invalid = |what: &str| {
                Error::new(
                    ErrorKind::Invalid,
                    format!("{}: resource type `{type_name}` {what}", rt.location),
                )
            };
            return match rt.type_.as_str() {
                "registry-image" | "docker-image" => {
                    let repo = rt
                        .source
                        .get("repository")
                        .and_then(|v| v.as_str())
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| invalid("has no `source.repository`"))?;
                    let image = match rt.source.get("tag").and_then(tag_text) {
                        Some(tag) => format!("{repo}:{tag}"),
                        None => repo.to_owned(),
                    };
                    Ok(self.in_image(self.prefixed(&image)))
                }
                "local" => {
                    let path = rt
                        .source
                        .get("path")
                        .and_then(|v| v.as_str())
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| invalid("has no `source.path`"))?;
                    Ok(ResolvedImage::Local {
                        dir: join(&self.base_dir, path),
                    })
                }
                other => Err(invalid(&format!(
                    "has type `{other}`; use `registry-image`, `docker-image` or `local`"
                ))),
            };
        }
        if let Some(dir) = self.local_types.get(type_name) {
            return Ok(ResolvedImage::Local { dir: dir.clone() });
        }
        if let Some(image) = self.overrides.get(type_name) {
            return Ok(self.in_image(image.clone()));
        }
        if type_name == MOCK_TYPE
            && let Some(e) = self.missing_mock("resource type `mock`")
        {
            return Err(e);
        }
        if let Some((_, image)) = BASE_IMAGES.iter().find(|(t, _)| *t == type_name) {
            return Ok(self.in_image(self.prefixed(image)));
        }
        Err(Error::not_found(format!(
            "resource type `{type_name}` is not declared and is not a base type"
        )))
    }

    /// The first resource `job` uses (its gets and puts, hooks included) whose scripts
    /// live in a container image that `runnable` (given the scripts' directory) says
    /// cannot be run here, with that image. A backend that runs no containers (the
    /// local one) asks this before any step runs, so such a pipeline is refused up
    /// front instead of failing as a step's own `exit 127`.
    pub fn unrunnable_image_resource<'p>(
        &self,
        pipeline: &'p Pipeline,
        job: &Job,
        runnable: impl Fn(&str) -> bool,
    ) -> Option<(&'p Resource, String)> {
        used_resources(job).into_iter().find_map(|name| {
            let resource = pipeline.resource(name)?;
            match self.resolve_resource(pipeline, resource).ok()? {
                ResolvedImage::Image { image, scripts_dir } if !runnable(&scripts_dir) => {
                    Some((resource, image))
                }
                _ => None,
            }
        })
    }

    /// The first image `job` needs that cannot be resolved (a resource's type, or an
    /// inline task's image), as its error. Asked before any step runs, so a missing
    /// setting (such as the `mock` image on Kubernetes) is reported up front rather
    /// than as the error of a step half-way through. Task configs read from files are
    /// only known when their step runs.
    pub fn unresolvable_image(&self, pipeline: &Pipeline, job: &Job) -> Option<Error> {
        let resources = used_resources(job).into_iter().find_map(|name| {
            let resource = pipeline.resource(name)?;
            self.resolve_resource(pipeline, resource)
                .err()
                .map(|e| e.context(&resource.location))
        });
        resources.or_else(|| {
            job.steps().into_iter().find_map(|step| match &step.kind {
                StepKind::Task(t) => match &t.config {
                    TaskSource::Inline(c) => self
                        .task_image(c)
                        .err()
                        .map(|e| e.context(format_args!("task `{}`", t.name))),
                    TaskSource::File { .. } => None,
                },
                _ => None,
            })
        })
    }

    /// What runs the scripts of `resource` (of its type).
    pub fn resolve_resource(
        &self,
        pipeline: &Pipeline,
        resource: &Resource,
    ) -> Result<ResolvedImage> {
        self.resolve_type(pipeline, &resource.type_)
            .map_err(|e| e.context(format_args!("resource `{}`", resource.name)))
    }

    /// The image `config` runs in: its `image_resource` (`repository[:tag]`), or the
    /// default task image. An `image_resource` of type `mock` runs in the `mock`
    /// type's image (an override, else `concourse/mock-resource`, as Concourse's
    /// `mirror_self` would give); a backend that runs tasks on the host ignores it.
    pub fn task_image(&self, config: &TaskConfig) -> Result<String> {
        match &config.image_resource {
            None => Ok(self.prefixed(&self.default_task_image)),
            Some(ir) if ir.type_ == MOCK_TYPE => {
                if let Some(image) = self.overrides.get(MOCK_TYPE) {
                    return Ok(image.clone());
                }
                if let Some(e) = self.missing_mock("an `image_resource` of type `mock`") {
                    return Err(e.context(format_args!("{}", config.location)));
                }
                let base = BASE_IMAGES
                    .iter()
                    .find(|(t, _)| *t == MOCK_TYPE)
                    .map_or("concourse/mock-resource", |(_, i)| i);
                Ok(self.prefixed(base))
            }
            Some(ir) => {
                let repo = ir
                    .source
                    .get("repository")
                    .and_then(|v| v.as_str())
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Invalid,
                            format!(
                                "{}: `image_resource` has no `source.repository`",
                                config.location
                            ),
                        )
                    })?;
                let image = match ir.source.get("tag").and_then(tag_text) {
                    Some(tag) => format!("{repo}:{tag}"),
                    None => repo.to_owned(),
                };
                Ok(self.prefixed(&image))
            }
        }
    }
}

/// The resources `job`'s gets and puts name, in plan order.
fn used_resources(job: &Job) -> Vec<&str> {
    job.steps()
        .into_iter()
        .filter_map(|s| match &s.kind {
            StepKind::Get(g) => Some(g.resource.as_str()),
            StepKind::Put(p) => Some(p.resource.as_str()),
            _ => None,
        })
        .collect()
}

/// A tag as text: YAML may have read `tag: 1.36` as a number.
fn tag_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `path` taken relative to `base` (absolute paths stay as they are); `.` segments and
/// redundant separators are dropped. `..` is kept: the operator chose the directory.
fn join(base: &str, path: &str) -> String {
    let full = if path.starts_with('/') || base.is_empty() {
        path.to_owned()
    } else {
        format!("{base}/{path}")
    };
    let absolute = full.starts_with('/');
    let parts: Vec<&str> = full
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ImageResource, Location, ResourceType, RunConfig};
    use serde_json::json;

    fn pipeline(types: Vec<ResourceType>) -> Pipeline {
        Pipeline {
            name: "p".into(),
            resources: vec![],
            resource_types: types,
            jobs: vec![],
        }
    }

    fn rt(name: &str, type_: &str, source: serde_json::Value) -> ResourceType {
        ResourceType {
            name: name.into(),
            type_: type_.into(),
            source,
            location: Location {
                file: "p.yml".into(),
                line: 4,
                column: 3,
            },
        }
    }

    fn image(s: &str) -> ResolvedImage {
        ResolvedImage::Image {
            image: s.into(),
            scripts_dir: "/opt/resource".into(),
        }
    }

    fn task(image_resource: Option<ImageResource>) -> TaskConfig {
        TaskConfig {
            platform: "linux".into(),
            image_resource,
            inputs: vec![],
            outputs: vec![],
            caches: vec![],
            params: Default::default(),
            run: RunConfig {
                path: "true".into(),
                args: vec![],
                dir: None,
                user: None,
            },
            container_limits: Default::default(),
            location: Location::default(),
        }
    }

    #[test]
    fn base_images_cover_the_base_types() {
        let types: Vec<&str> = BASE_IMAGES.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, crate::plan::BASE_RESOURCE_TYPES);
    }

    #[test]
    fn base_types() {
        let r = ImageResolver::new();
        let p = pipeline(vec![]);
        for (t, _) in BASE_IMAGES {
            assert_eq!(
                r.resolve_type(&p, t).unwrap(),
                image(&format!("concourse/{t}-resource"))
            );
        }
        let err = r.resolve_type(&p, "nope").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.message().contains("nope"));
    }

    #[test]
    fn overrides_and_prefix() {
        let r = ImageResolver::new()
            .with_registry_prefix("registry.example.com/mirror")
            .with_override("git", "internal/git:2")
            .with_override("slack", "internal/slack");
        let p = pipeline(vec![]);
        assert_eq!(r.resolve_type(&p, "git").unwrap(), image("internal/git:2"));
        assert_eq!(
            r.resolve_type(&p, "slack").unwrap(),
            image("internal/slack")
        );
        assert_eq!(
            r.resolve_type(&p, "time").unwrap(),
            image("registry.example.com/mirror/concourse/time-resource")
        );
        assert_eq!(
            r.task_image(&task(None)).unwrap(),
            "registry.example.com/mirror/busybox:1.36"
        );
        let already = ImageResolver::new()
            .with_registry_prefix("m/")
            .with_default_task_image("m/busybox");
        assert_eq!(already.task_image(&task(None)).unwrap(), "m/busybox");
    }

    #[test]
    fn declared_types() {
        let p = pipeline(vec![
            rt(
                "slack",
                "registry-image",
                json!({"repository": "cfcommunity/slack", "tag": "v1"}),
            ),
            rt("git", "docker-image", json!({"repository": "my/git"})),
            rt(
                "num",
                "registry-image",
                json!({"repository": "x/y", "tag": 1.5}),
            ),
            rt("scripts", "local", json!({"path": "./resources/mine/"})),
            rt("abs", "local", json!({"path": "/opt/res"})),
            rt("norepo", "registry-image", json!({})),
            rt("nopath", "local", json!({})),
            rt("weird", "git", json!({"uri": "x"})),
        ]);
        let r = ImageResolver::new().with_base_dir("/home/me/ci");
        assert_eq!(
            r.resolve_type(&p, "slack").unwrap(),
            image("cfcommunity/slack:v1")
        );
        assert_eq!(r.resolve_type(&p, "git").unwrap(), image("my/git"));
        assert_eq!(r.resolve_type(&p, "num").unwrap(), image("x/y:1.5"));
        assert_eq!(
            r.resolve_type(&p, "scripts").unwrap(),
            ResolvedImage::Local {
                dir: "/home/me/ci/resources/mine".into()
            }
        );
        assert_eq!(
            r.resolve_type(&p, "abs").unwrap(),
            ResolvedImage::Local {
                dir: "/opt/res".into()
            }
        );
        assert_eq!(
            ImageResolver::new().resolve_type(&p, "scripts").unwrap(),
            ResolvedImage::Local {
                dir: "resources/mine".into()
            }
        );
        for bad in ["norepo", "nopath", "weird"] {
            let err = r.resolve_type(&p, bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{bad}");
            assert!(err.message().contains("p.yml:4:3"), "{}", err.message());
            assert!(err.message().contains(bad));
        }
        let prefixed = ImageResolver::new().with_registry_prefix("mirror.io/");
        assert_eq!(
            prefixed.resolve_type(&p, "slack").unwrap(),
            image("mirror.io/cfcommunity/slack:v1")
        );
        let res = Resource {
            name: "notify".into(),
            type_: "nopath".into(),
            source: json!({}),
            version: None,
            location: Location::default(),
        };
        let err = r.resolve_resource(&p, &res).unwrap_err();
        assert!(err.message().contains("resource `notify`"));
    }

    #[test]
    fn task_images() {
        let r = ImageResolver::new();
        assert_eq!(r.task_image(&task(None)).unwrap(), "busybox:1.36");
        let r = r.with_default_task_image("alpine:3");
        assert_eq!(r.task_image(&task(None)).unwrap(), "alpine:3");
        let ir = |source| ImageResource {
            type_: "registry-image".into(),
            source,
        };
        assert_eq!(
            r.task_image(&task(Some(ir(
                json!({"repository": "golang", "tag": "1.22"})
            ))))
            .unwrap(),
            "golang:1.22"
        );
        assert_eq!(
            r.task_image(&task(Some(ir(json!({"repository": "golang"})))))
                .unwrap(),
            "golang"
        );
        let err = r.task_image(&task(Some(ir(json!({}))))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
    }

    #[test]
    fn mock_runs_on_the_host_where_a_local_type_is_given() {
        let r = ImageResolver::new().with_local_type("mock", "/data/mock");
        let p = pipeline(vec![]);
        assert_eq!(
            r.resolve_type(&p, "mock").unwrap(),
            ResolvedImage::Local {
                dir: "/data/mock".into()
            }
        );
        // A pipeline's own `mock` type is the pipeline's choice.
        let own = pipeline(vec![rt(
            "mock",
            "registry-image",
            json!({"repository": "my/mock"}),
        )]);
        assert_eq!(r.resolve_type(&own, "mock").unwrap(), image("my/mock"));
        // The local backend never refuses it up front.
        let job: Job = mock_job();
        let p = mock_pipeline();
        assert!(r.unrunnable_image_resource(&p, &job, |_| false).is_none());
        assert!(r.unresolvable_image(&p, &job).is_none());
    }

    fn mock_pipeline() -> Pipeline {
        Pipeline {
            resources: vec![Resource {
                name: "m".into(),
                type_: "mock".into(),
                source: json!({}),
                version: None,
                location: Location {
                    file: "p.yml".into(),
                    line: 2,
                    column: 3,
                },
            }],
            ..pipeline(vec![])
        }
    }

    fn mock_job() -> Job {
        let text = "resources: [{name: m, type: mock}]\njobs:\n- name: j\n  plan:\n  - get: m\n";
        let p = crate::plan::parse_pipeline(text, "p.yml", &Default::default()).unwrap();
        p.jobs[0].clone()
    }

    #[test]
    fn a_missing_mock_image_is_an_error_naming_the_setting() {
        let r = ImageResolver::new().with_missing_mock_image("set --mock-image");
        let p = pipeline(vec![]);
        let err = r.resolve_type(&p, "mock").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid);
        assert!(err.message().contains("--mock-image"), "{}", err.message());
        // Other base types are unaffected.
        assert!(r.resolve_type(&p, "git").is_ok());
        let mock_task = task(Some(ImageResource {
            type_: "mock".into(),
            source: json!({"mirror_self": true}),
        }));
        let err = r.task_image(&mock_task).unwrap_err();
        assert!(err.message().contains("--mock-image"), "{}", err.message());
        // Refused before any step: the job's first unresolvable image.
        let err = r.unresolvable_image(&mock_pipeline(), &mock_job()).unwrap();
        assert!(
            err.message().starts_with("p.yml:2:3: resource `m`"),
            "{}",
            err.message()
        );
        assert!(err.message().contains("--mock-image"), "{}", err.message());

        // Given an image, the type and task images run in it, used as given.
        let given = r
            .clone()
            .with_registry_prefix("mirror/")
            .with_mock_image("ghcr.io/jb/jetbridge:1");
        assert_eq!(
            given.resolve_type(&p, "mock").unwrap(),
            image("ghcr.io/jb/jetbridge:1")
        );
        assert_eq!(
            given.task_image(&mock_task).unwrap(),
            "ghcr.io/jb/jetbridge:1"
        );
        assert!(
            given
                .unresolvable_image(&mock_pipeline(), &mock_job())
                .is_none()
        );
        // Without either, Concourse's own image, as for any base type.
        assert_eq!(
            ImageResolver::new().task_image(&mock_task).unwrap(),
            "concourse/mock-resource"
        );
    }

    #[test]
    fn joins() {
        assert_eq!(join(".", "x"), "x");
        assert_eq!(join("/a/", "./b//c/"), "/a/b/c");
        assert_eq!(join("a", "/abs"), "/abs");
        assert_eq!(join("", "rel"), "rel");
        assert_eq!(join(".", "."), ".");
        assert_eq!(join("/", "."), "/");
    }
}
