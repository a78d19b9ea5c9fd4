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
//!   image (`busybox:1.36` unless configured).
//!
//! A registry prefix (e.g. `registry.example.com/mirror/`) is put in front of every
//! image derived from the pipeline or the defaults (base types, declared types, task
//! images) so pulls can go through a mirror. Images given by [`ImageResolver::with_override`]
//! are used exactly as given: whoever configures them names the full reference.

use std::collections::BTreeMap;

use crate::plan::{Job, Pipeline, Resource, Step, StepKind, TaskConfig};
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
        }
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
        if let Some(image) = self.overrides.get(type_name) {
            return Ok(self.in_image(image.clone()));
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
        fn walk<'s>(step: &'s Step, out: &mut Vec<&'s str>) {
            match &step.kind {
                StepKind::Get(g) => out.push(&g.resource),
                StepKind::Put(p) => out.push(&p.resource),
                StepKind::Task(_) | StepKind::LoadVar(_) | StepKind::SetPipeline(_) => {}
                StepKind::InParallel(p) => p.steps.iter().for_each(|s| walk(s, out)),
                StepKind::Do(steps) => steps.iter().for_each(|s| walk(s, out)),
                StepKind::Try(s) => walk(s, out),
            }
            let h = &step.hooks;
            for hook in [
                &h.on_success,
                &h.on_failure,
                &h.on_error,
                &h.on_abort,
                &h.ensure,
            ]
            .into_iter()
            .flatten()
            {
                walk(hook, out);
            }
        }
        let mut used = Vec::new();
        job.plan.iter().for_each(|s| walk(s, &mut used));
        let h = &job.hooks;
        for hook in [
            &h.on_success,
            &h.on_failure,
            &h.on_error,
            &h.on_abort,
            &h.ensure,
        ]
        .into_iter()
        .flatten()
        {
            walk(hook, &mut used);
        }
        used.into_iter().find_map(|name| {
            let resource = pipeline.resource(name)?;
            match self.resolve_resource(pipeline, resource).ok()? {
                ResolvedImage::Image { image, scripts_dir } if !runnable(&scripts_dir) => {
                    Some((resource, image))
                }
                _ => None,
            }
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
    /// default task image.
    pub fn task_image(&self, config: &TaskConfig) -> Result<String> {
        match &config.image_resource {
            None => Ok(self.prefixed(&self.default_task_image)),
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
    fn joins() {
        assert_eq!(join(".", "x"), "x");
        assert_eq!(join("/a/", "./b//c/"), "/a/b/c");
        assert_eq!(join("a", "/abs"), "/abs");
        assert_eq!(join("", "rel"), "rel");
        assert_eq!(join(".", "."), ".");
        assert_eq!(join("/", "."), "/");
    }
}
