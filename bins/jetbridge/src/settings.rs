//! Typed settings of what the binary wires together (for `run`, and the commands that
//! share its fields): plain data, independent of the command line.
//!
//! Three sources, highest first: a command-line flag, its `JETBRIDGE_*` variable (clap
//! resolves these two into one [`Settings`]), the config file given by `--config FILE`
//! (or `JETBRIDGE_CONFIG`), then the defaults. Every field is optional so that a layer
//! can leave it unset; [`Settings::overlay`] puts one layer over another and the
//! accessors (and `wiring`) apply the defaults.
//!
//! The config file is YAML with these keys (kebab-case field names, nested by section),
//! so a Helm chart's values map one to one onto it:
//!
//! ```yaml
//! backend: kube                     # --backend
//! data-dir: /var/lib/jetbridge      # --data-dir
//! worker: ci-1                      # --worker
//! keep-pods: false                  # --keep-pods
//! abort-grace: 60s                  # --abort-grace
//! volumes:
//!   path-or-url: gs://bucket/prefix # --volumes
//!   endpoint: http://minio:9000     # --volumes-endpoint
//!   allow-http: true                # --volumes-allow-http
//!   anonymous: false                # --volumes-anonymous
//!   region: eu-west-1               # --volumes-region
//!   no-compression: false           # --volumes-no-compression
//! registry:
//!   url: postgres://ci@db:5432/ci   # --registry
//!   schema: jetbridge               # --registry-schema
//! kube:                             # every Kubernetes flag, same name without `--`;
//!   namespace: ci                   # repeatable flags are lists under the plural name
//!   image-pull-secrets: [regcred]   # (--image-pull-secret)
//!   node-selector: [pool=ci]        # (--node-selector KEY=VALUE)
//! images:
//!   resource-type-images: [git=registry.example.com/git-resource:1] # --resource-type-image
//!   registry-prefix: registry.example.com/mirror/                   # --registry-prefix
//!   default-task-image: busybox:1.36                                # --default-task-image
//! server:                           # `jetbridge server` only
//!   listen: 0.0.0.0:8080            # --listen
//!   api-token-file: /etc/jetbridge/tokens # --api-token-file
//!   max-builds: 8                   # --max-builds
//!   drain-timeout: 10m              # --drain-timeout
//! ```
//!
//! The full list, with flags and variables, is generated into `docs/configuration.md`
//! from `CONFIG_KEYS` and the clap definitions (see the `config_docs` tests).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the wiring needs. `Default` is the empty layer (nothing set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Where steps run; default [`Backend::Local`].
    pub backend: Option<Backend>,
    pub volumes: VolumeSettings,
    pub registry: RegistrySettings,
    pub kube: KubeSettings,
    pub images: ImageSettings,
    /// Working data; default `$XDG_DATA_HOME/jetbridge` or `~/.local/share/jetbridge`.
    pub data_dir: Option<PathBuf>,
    /// Worker name; default `<hostname>-<pid>`.
    pub worker: Option<String>,
    /// The registration's lifetime without renewal; default [`DEFAULT_WORKER_TTL`].
    pub worker_ttl: Option<GraceDuration>,
    pub keep_pods: Option<bool>,
    /// Default [`DEFAULT_ABORT_GRACE`].
    pub abort_grace: Option<GraceDuration>,
    /// `jetbridge server` only.
    pub server: ServerSettings,
}

/// The server's own settings (listeners, auth, queue limits, drain).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerSettings {
    /// Default [`DEFAULT_LISTEN`].
    pub listen: Option<String>,
    /// Default [`DEFAULT_METRICS_LISTEN`].
    pub metrics_listen: Option<String>,
    pub api_token_file: Option<PathBuf>,
    pub max_builds: Option<usize>,
    /// 0: no limit.
    pub max_queued: Option<u64>,
    pub drain_timeout: Option<GraceDuration>,
    pub lease_ttl: Option<GraceDuration>,
    pub max_body_bytes: Option<usize>,
    pub vars_key_file: Option<PathBuf>,
    pub allow_local_resources: Option<bool>,
}

/// `--listen` when nothing sets it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// `--metrics-listen` when nothing sets it.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9391";

impl ServerSettings {
    fn overlay(self, over: ServerSettings) -> ServerSettings {
        let ServerSettings {
            listen,
            metrics_listen,
            api_token_file,
            max_builds,
            max_queued,
            drain_timeout,
            lease_ttl,
            max_body_bytes,
            vars_key_file,
            allow_local_resources,
        } = over;
        ServerSettings {
            listen: listen.or(self.listen),
            metrics_listen: metrics_listen.or(self.metrics_listen),
            api_token_file: api_token_file.or(self.api_token_file),
            max_builds: max_builds.or(self.max_builds),
            max_queued: max_queued.or(self.max_queued),
            drain_timeout: drain_timeout.or(self.drain_timeout),
            lease_ttl: lease_ttl.or(self.lease_ttl),
            max_body_bytes: max_body_bytes.or(self.max_body_bytes),
            vars_key_file: vars_key_file.or(self.vars_key_file),
            allow_local_resources: allow_local_resources.or(self.allow_local_resources),
        }
    }
}

/// The volume store: a directory or a bucket URL, and the bucket's options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct VolumeSettings {
    pub path_or_url: Option<String>,
    pub endpoint: Option<String>,
    pub allow_http: Option<bool>,
    pub anonymous: Option<bool>,
    pub region: Option<String>,
    pub no_compression: Option<bool>,
}

/// The artifact registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistrySettings {
    /// `memory` (default) or a `postgres://` URL.
    pub url: Option<String>,
    pub schema: Option<String>,
}

/// Kubernetes: one field per Kubernetes flag, lists for the repeatable ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct KubeSettings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub image_pull_secrets: Option<Vec<String>>,
    pub service_account: Option<String>,
    /// `KEY=VALUE` entries, as the flag takes them.
    pub node_selector: Option<Vec<String>>,
    /// `KEY=VALUE` entries.
    pub pod_annotations: Option<Vec<String>>,
    /// `KEY[=VALUE]:EFFECT` entries.
    pub tolerations: Option<Vec<String>>,
    pub default_cpu: Option<String>,
    pub default_memory: Option<String>,
    pub helper_image: Option<String>,
    /// The image of the step-pod helper; blank: none.
    pub step_helper_image: Option<String>,
    pub restricted: Option<bool>,
    pub allow_privileged: Option<bool>,
    pub artifact_claim: Option<String>,
    /// Default: empty (the claim's root).
    pub artifact_claim_prefix: Option<String>,
    pub cache_claim: Option<String>,
}

/// Images of resource types and tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageSettings {
    /// `TYPE=IMAGE` entries.
    pub resource_type_images: Option<Vec<String>>,
    pub registry_prefix: Option<String>,
    pub default_task_image: Option<String>,
    /// The image of the built-in `mock` on Kubernetes (the jetbridge image).
    pub mock_image: Option<String>,
}

/// Where steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Local processes in sandbox directories.
    Local,
    /// A pod per step on Kubernetes.
    Kube,
}

/// A duration written as text (`60s`, `2m`), parsed as pipelines' durations are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraceDuration(pub Duration);

impl std::str::FromStr for GraceDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        jetbridge_core::plan::parse_duration(s).map(GraceDuration)
    }
}

impl<'de> Deserialize<'de> for GraceDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
impl serde::Serialize for GraceDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

/// `--abort-grace` when nothing sets it.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(60);
/// `--worker-ttl` when nothing sets it.
pub const DEFAULT_WORKER_TTL: Duration = Duration::from_secs(60);
/// `--registry` when nothing sets it.
pub const DEFAULT_REGISTRY: &str = "memory";

impl Settings {
    /// `over` on top of `self`: each field `over` sets wins, the others stay.
    pub fn overlay(self, over: Settings) -> Settings {
        // Destructured so that a new field cannot be forgotten here.
        let Settings {
            backend,
            volumes,
            registry,
            kube,
            images,
            data_dir,
            worker,
            worker_ttl,
            keep_pods,
            abort_grace,
            server,
        } = over;
        Settings {
            backend: backend.or(self.backend),
            volumes: self.volumes.overlay(volumes),
            registry: self.registry.overlay(registry),
            kube: self.kube.overlay(kube),
            images: self.images.overlay(images),
            data_dir: data_dir.or(self.data_dir),
            worker: worker.or(self.worker),
            worker_ttl: worker_ttl.or(self.worker_ttl),
            keep_pods: keep_pods.or(self.keep_pods),
            abort_grace: abort_grace.or(self.abort_grace),
            server: self.server.overlay(server),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend.unwrap_or(Backend::Local)
    }

    pub fn keep_pods(&self) -> bool {
        self.keep_pods.unwrap_or(false)
    }

    pub fn worker_ttl(&self) -> Duration {
        self.worker_ttl.map_or(DEFAULT_WORKER_TTL, |g| g.0)
    }

    pub fn abort_grace(&self) -> Duration {
        self.abort_grace.map_or(DEFAULT_ABORT_GRACE, |g| g.0)
    }
}

impl VolumeSettings {
    fn overlay(self, over: VolumeSettings) -> VolumeSettings {
        let VolumeSettings {
            path_or_url,
            endpoint,
            allow_http,
            anonymous,
            region,
            no_compression,
        } = over;
        VolumeSettings {
            path_or_url: path_or_url.or(self.path_or_url),
            endpoint: endpoint.or(self.endpoint),
            allow_http: allow_http.or(self.allow_http),
            anonymous: anonymous.or(self.anonymous),
            region: region.or(self.region),
            no_compression: no_compression.or(self.no_compression),
        }
    }
}

impl RegistrySettings {
    pub fn overlay(self, over: RegistrySettings) -> RegistrySettings {
        let RegistrySettings { url, schema } = over;
        RegistrySettings {
            url: url.or(self.url),
            schema: schema.or(self.schema),
        }
    }

    /// The URL, `memory` when nothing sets it.
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_REGISTRY)
    }
}

impl KubeSettings {
    pub fn overlay(self, over: KubeSettings) -> KubeSettings {
        let KubeSettings {
            kubeconfig,
            context,
            namespace,
            image_pull_secrets,
            service_account,
            node_selector,
            pod_annotations,
            tolerations,
            default_cpu,
            default_memory,
            helper_image,
            step_helper_image,
            restricted,
            allow_privileged,
            artifact_claim,
            artifact_claim_prefix,
            cache_claim,
        } = over;
        KubeSettings {
            kubeconfig: kubeconfig.or(self.kubeconfig),
            context: context.or(self.context),
            namespace: namespace.or(self.namespace),
            image_pull_secrets: image_pull_secrets.or(self.image_pull_secrets),
            service_account: service_account.or(self.service_account),
            node_selector: node_selector.or(self.node_selector),
            pod_annotations: pod_annotations.or(self.pod_annotations),
            tolerations: tolerations.or(self.tolerations),
            default_cpu: default_cpu.or(self.default_cpu),
            default_memory: default_memory.or(self.default_memory),
            helper_image: helper_image.or(self.helper_image),
            step_helper_image: step_helper_image.or(self.step_helper_image),
            restricted: restricted.or(self.restricted),
            allow_privileged: allow_privileged.or(self.allow_privileged),
            artifact_claim: artifact_claim.or(self.artifact_claim),
            artifact_claim_prefix: artifact_claim_prefix.or(self.artifact_claim_prefix),
            cache_claim: cache_claim.or(self.cache_claim),
        }
    }

    /// The directory of the volumes inside the artifact claim; empty: its root.
    pub fn artifact_claim_prefix(&self) -> &str {
        self.artifact_claim_prefix.as_deref().unwrap_or("")
    }
}

impl ImageSettings {
    fn overlay(self, over: ImageSettings) -> ImageSettings {
        let ImageSettings {
            resource_type_images,
            registry_prefix,
            default_task_image,
            mock_image,
        } = over;
        ImageSettings {
            resource_type_images: resource_type_images.or(self.resource_type_images),
            registry_prefix: registry_prefix.or(self.registry_prefix),
            default_task_image: default_task_image.or(self.default_task_image),
            mock_image: mock_image.or(self.mock_image),
        }
    }
}

/// Read the config file at `path`. The error is a message for the user: it names the
/// file (with line and column when the parser knows them) and what to do.
pub fn load_file(path: &Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the config file {}: {e}\n  check the path given to --config / JETBRIDGE_CONFIG",
            path.display()
        )
    })?;
    parse_file(&text, &path.display().to_string())
}

/// Parse a config file's text; `file` names it in errors.
pub fn parse_file(text: &str, file: &str) -> Result<Settings, String> {
    // A file of comments only (or nothing) sets nothing, as an empty mapping would.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Settings::default());
    }
    // YAML 1.2 booleans only, as in pipelines: `yes` is a string, so `keep-pods: yes` is
    // refused rather than guessed.
    let options = serde_saphyr::options! {
        with_snippet: false,
        strict_booleans: true,
    };
    serde_saphyr::from_str_with_options::<Settings>(text, options).map_err(|err| {
        use serde_saphyr::MessageFormatter;
        let at = err
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| format!("{file}:{}:{}", l.line(), l.column().max(1)))
            .unwrap_or_else(|| file.to_owned());
        let msg = serde_saphyr::UserMessageFormatter.format_message(err.without_snippet());
        // The message may quote input: one line, no control characters.
        let msg: String = msg
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let hint = if msg.contains("unknown field") {
            "remove the key or fix its spelling; the keys are listed in docs/configuration.md (\"Config file\")"
        } else {
            "fix the value at this position; docs/configuration.md (\"Config file\") gives each key's type"
        };
        format!("config file {at}: {msg}\n  {hint}")
    })
}

/// Each config-file key and the id of the `run` argument (the clap field name) that
/// sets the same setting. The docs table is generated from this and the clap
/// definitions; tests check it against [`Settings`] and the `run` flags.
#[cfg(test)]
pub const CONFIG_KEYS: &[(&str, &str)] = &[
    ("backend", "backend"),
    ("data-dir", "data_dir"),
    ("worker", "worker"),
    ("worker-ttl", "worker_ttl"),
    ("keep-pods", "keep_pods"),
    ("abort-grace", "abort_grace"),
    ("volumes.path-or-url", "volumes"),
    ("volumes.endpoint", "volumes_endpoint"),
    ("volumes.allow-http", "volumes_allow_http"),
    ("volumes.anonymous", "volumes_anonymous"),
    ("volumes.region", "volumes_region"),
    ("volumes.no-compression", "volumes_no_compression"),
    ("registry.url", "registry"),
    ("registry.schema", "registry_schema"),
    ("kube.kubeconfig", "kubeconfig"),
    ("kube.context", "context"),
    ("kube.namespace", "namespace"),
    ("kube.image-pull-secrets", "image_pull_secrets"),
    ("kube.service-account", "service_account"),
    ("kube.node-selector", "node_selector"),
    ("kube.pod-annotations", "pod_annotations"),
    ("kube.tolerations", "tolerations"),
    ("kube.default-cpu", "default_cpu"),
    ("kube.default-memory", "default_memory"),
    ("kube.helper-image", "helper_image"),
    ("kube.step-helper-image", "step_helper_image"),
    ("kube.restricted", "restricted"),
    ("kube.allow-privileged", "allow_privileged"),
    ("kube.artifact-claim", "artifact_claim"),
    ("kube.artifact-claim-prefix", "artifact_claim_prefix"),
    ("kube.cache-claim", "cache_claim"),
    ("images.resource-type-images", "resource_type_images"),
    ("images.registry-prefix", "registry_prefix"),
    ("images.default-task-image", "default_task_image"),
    ("images.mock-image", "mock_image"),
    ("server.listen", "listen"),
    ("server.metrics-listen", "metrics_listen"),
    ("server.api-token-file", "api_token_file"),
    ("server.max-builds", "max_builds"),
    ("server.max-queued", "max_queued"),
    ("server.drain-timeout", "drain_timeout"),
    ("server.lease-ttl", "lease_ttl"),
    ("server.max-body-bytes", "max_body_bytes"),
    ("server.vars-key-file", "vars_key_file"),
    ("server.allow-local-resources", "allow_local_resources"),
];

/// Arguments of `run` and `server` that are not settings: what one invocation does,
/// and the output options needed before any file is read.
#[cfg(test)]
pub const RUN_ONLY_ARGS: &[&str] = &[
    "pipeline",
    "vars",
    "job",
    "build_number",
    "config",
    "log_format",
    "color",
    "help",
    "version",
    // A config file that set it would stop the server it configures from starting.
    "check_config",
];

/// The generated part of `docs/configuration.md`'s "Config file" section.
#[cfg(test)]
pub mod docs {
    use clap::CommandFactory;

    pub const START: &str = "<!-- config-keys:start -->";
    pub const END: &str = "<!-- config-keys:end -->";

    /// One row: the key, the flag (with its value), the variable and the flag's help.
    #[derive(Debug)]
    pub struct ConfigKey {
        pub key: &'static str,
        pub flag: String,
        pub env: String,
        pub help: String,
    }

    /// The `run` command as clap defines it.
    pub fn run_command() -> clap::Command {
        let mut cli = crate::cli::Cli::command();
        cli.build();
        cli.find_subcommand("run")
            .expect("a run subcommand")
            .clone()
    }

    /// The `server` command as clap defines it (every `run` setting and its own).
    pub fn server_command() -> clap::Command {
        let mut cli = crate::cli::Cli::command();
        cli.build();
        cli.find_subcommand("server")
            .expect("a server subcommand")
            .clone()
    }

    /// Every config key with what clap knows of the flag that shares its setting.
    pub fn config_keys() -> Vec<ConfigKey> {
        let server = server_command();
        super::CONFIG_KEYS
            .iter()
            .map(|&(key, id)| {
                let arg = server
                    .get_arguments()
                    .find(|a| a.get_id() == id)
                    .unwrap_or_else(|| panic!("CONFIG_KEYS: `server` has no argument {id:?}"));
                let long = arg.get_long().expect("settings are long flags");
                let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
                let flag = if !takes_value {
                    format!("--{long}")
                } else {
                    let values: Vec<_> = arg
                        .get_possible_values()
                        .iter()
                        .map(|v| v.get_name().to_owned())
                        .collect();
                    let value = if !values.is_empty() {
                        values.join("|")
                    } else {
                        arg.get_value_names()
                            .and_then(|v| v.first())
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| id.to_uppercase())
                    };
                    format!("--{long} {value}")
                };
                let env = arg
                    .get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let help = arg
                    .get_long_help()
                    .or(arg.get_help())
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                ConfigKey {
                    key,
                    flag,
                    env,
                    help: help.split_whitespace().collect::<Vec<_>>().join(" "),
                }
            })
            .collect()
    }

    /// The Markdown table between the markers (without them).
    pub fn render() -> String {
        let cell = |s: &str| s.replace('|', "\\|");
        let mut out = String::from("| key | flag | variable | meaning |\n|---|---|---|---|\n");
        for k in config_keys() {
            let env = if k.env.is_empty() {
                String::new()
            } else {
                format!("`{}`", k.env)
            };
            out.push_str(&format!(
                "| `{}` | `{}` | {} | {} |\n",
                k.key,
                cell(&k.flag),
                env,
                cell(&k.help)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        parse_file(text, "jetbridge.yml")
    }

    #[test]
    fn a_file_sets_nested_keys() {
        let s = parse(
            "backend: kube\nkeep-pods: true\nabort-grace: 2m\nregistry:\n  url: postgres://u@h/db\nkube:\n  node-selector: [pool=ci, disk=ssd]\n  restricted: true\nimages:\n  registry-prefix: r.example/\n",
        )
        .expect("parses");
        assert_eq!(s.backend(), Backend::Kube);
        assert!(s.keep_pods());
        assert_eq!(s.abort_grace(), Duration::from_secs(120));
        assert_eq!(s.registry.url(), "postgres://u@h/db");
        assert_eq!(
            s.kube.node_selector.as_deref(),
            Some(&["pool=ci".to_owned(), "disk=ssd".to_owned()][..])
        );
        assert_eq!(s.kube.restricted, Some(true));
        assert_eq!(s.images.registry_prefix.as_deref(), Some("r.example/"));
    }

    #[test]
    fn empty_and_comment_only_files_set_nothing() {
        assert_eq!(parse(""), Ok(Settings::default()));
        assert_eq!(parse("# nothing yet\n\n"), Ok(Settings::default()));
        let s = Settings::default();
        assert_eq!(s.backend(), Backend::Local);
        assert_eq!(s.registry.url(), "memory");
        assert_eq!(s.abort_grace(), DEFAULT_ABORT_GRACE);
        assert_eq!(s.kube.artifact_claim_prefix(), "");
        assert!(!s.keep_pods());
    }

    #[test]
    fn the_upper_layer_wins_for_strings_booleans_and_lists() {
        let file = parse(
            "worker: from-file\nkeep-pods: true\nimages:\n  resource-type-images: [git=file]\nkube:\n  namespace: file-ns\n",
        )
        .expect("parses");
        let cli = Settings {
            worker: Some("from-cli".into()),
            keep_pods: Some(false),
            images: ImageSettings {
                resource_type_images: Some(vec!["git=cli".into(), "s3=cli".into()]),
                ..ImageSettings::default()
            },
            ..Settings::default()
        };
        let s = file.clone().overlay(cli);
        assert_eq!(s.worker.as_deref(), Some("from-cli"));
        // An explicit `false` (a variable set to false) beats the file's `true`.
        assert_eq!(s.keep_pods, Some(false));
        // A list replaces the file's list; it does not add to it.
        assert_eq!(
            s.images.resource_type_images,
            Some(vec!["git=cli".into(), "s3=cli".into()])
        );
        // What the upper layer leaves unset comes from the file.
        assert_eq!(s.kube.namespace.as_deref(), Some("file-ns"));
        // Nothing over the file: the file as it is.
        assert_eq!(file.clone().overlay(Settings::default()), file);
    }

    /// Every key, set alone in a file, survives an empty layer on either side: no
    /// field is dropped by `overlay`.
    #[test]
    fn overlay_keeps_every_key() {
        for (key, _) in CONFIG_KEYS {
            let file = one_key(key);
            assert_ne!(file, Settings::default(), "{key}");
            assert_eq!(file.clone().overlay(Settings::default()), file, "{key}");
            assert_eq!(Settings::default().overlay(file.clone()), file, "{key}");
        }
    }

    /// A file setting only `key` (dotted), with a value of the key's type.
    fn one_key(key: &str) -> Settings {
        let (section, leaf) = match key.split_once('.') {
            Some((s, l)) => (Some(s), l),
            None => (None, key),
        };
        for value in ["kube", "5s", "true", "7", "[a=b]", "a=b"] {
            let text = match section {
                Some(s) => format!("{s}:\n  {leaf}: {value}\n"),
                None => format!("{leaf}: {value}\n"),
            };
            if let Ok(s) = parse(&text) {
                return s;
            }
        }
        panic!("no value fits {key}");
    }

    #[test]
    fn an_unknown_key_names_the_file_line_and_column() {
        let err = parse("backend: kube\nkube:\n  namespace: ci\n  nodeselector: [a=b]\n")
            .expect_err("unknown key");
        assert!(err.starts_with("config file jetbridge.yml:4:3: "), "{err}");
        assert!(err.contains("nodeselector"), "{err}");
        assert!(err.contains("remove the key or fix its spelling"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_with_its_line() {
        let err = parse("worker: w\nkeep-pods: yes\n").expect_err("not a boolean");
        assert!(err.starts_with("config file jetbridge.yml:2:"), "{err}");
        assert!(err.contains("true or false"), "{err}");
        let err = parse("kube:\n  tolerations: a:NoSchedule\n").expect_err("not a list");
        assert!(err.starts_with("config file jetbridge.yml:2:"), "{err}");
        let err = parse("backend: docker\n").expect_err("no such backend");
        assert!(err.starts_with("config file jetbridge.yml:1:"), "{err}");
        assert!(err.contains("docker"), "{err}");
        let err = parse("abort-grace: soon\n").expect_err("not a duration");
        assert!(err.starts_with("config file jetbridge.yml:1:"), "{err}");
    }

    #[test]
    fn bad_yaml_names_the_file_and_line() {
        let err = parse("backend: kube\nworker: \"unclosed\n").expect_err("bad YAML");
        assert!(err.starts_with("config file jetbridge.yml:2:"), "{err}");
        let err = parse("backend: kube\nbackend: local\n").expect_err("duplicate key");
        assert!(err.starts_with("config file jetbridge.yml:2:1: "), "{err}");
        let err = parse("- a\n- b\n").expect_err("not a mapping");
        assert!(err.starts_with("config file jetbridge.yml"), "{err}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load_file(Path::new("/nonexistent/jetbridge.yml")).expect_err("missing");
        assert!(
            err.contains("cannot read the config file /nonexistent/jetbridge.yml"),
            "{err}"
        );
    }

    /// The keys of [`Settings`], dotted, as serde sees them.
    fn settings_keys() -> Vec<String> {
        fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                _ => out.push(prefix.to_owned()),
            }
        }
        let mut out = Vec::new();
        let v = serde_json::to_value(Settings::default()).expect("serializes");
        walk("", &v, &mut out);
        out.sort();
        out
    }

    #[test]
    fn config_keys_are_exactly_the_settings_fields() {
        let mut table: Vec<String> = CONFIG_KEYS.iter().map(|(k, _)| (*k).to_owned()).collect();
        table.sort();
        assert_eq!(
            table,
            settings_keys(),
            "CONFIG_KEYS must list every field of Settings, and nothing else"
        );
    }

    /// Every argument of `run` is a setting with a config key, or listed as run-only:
    /// a new flag cannot be added without deciding which.
    #[test]
    fn config_docs_cover_every_run_flag() {
        for run in [docs::run_command(), docs::server_command()] {
            let mapped: Vec<&str> = CONFIG_KEYS.iter().map(|(_, id)| *id).collect();
            let missing: Vec<String> = run
                .get_arguments()
                .map(|a| a.get_id().as_str().to_owned())
                .filter(|id| {
                    !mapped.contains(&id.as_str()) && !RUN_ONLY_ARGS.contains(&id.as_str())
                })
                .collect();
            assert!(
                missing.is_empty(),
                "`{}` arguments without a config key: {missing:?}; add them to CONFIG_KEYS (and \
             Settings), or to RUN_ONLY_ARGS if they are not settings",
                run.get_name()
            );
        }
    }

    /// The table of keys in docs/configuration.md is the one generated from the clap
    /// definitions; `JETBRIDGE_UPDATE_DOCS=1 cargo test -p jetbridge config_docs`
    /// rewrites it.
    #[test]
    fn config_docs_are_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let doc = std::fs::read_to_string(&path).expect("docs/configuration.md");
        let (Some(start), Some(end)) = (doc.find(docs::START), doc.find(docs::END)) else {
            panic!(
                "docs/configuration.md lacks the markers {} and {} around the config keys",
                docs::START,
                docs::END
            );
        };
        let body_start = start + docs::START.len();
        assert!(body_start <= end, "the markers are out of order");
        let current = doc[body_start..end].trim_matches('\n');
        let wanted = docs::render();
        if current == wanted.trim_matches('\n') {
            return;
        }
        if std::env::var_os("JETBRIDGE_UPDATE_DOCS").is_some() {
            let updated = format!("{}\n{wanted}{}", &doc[..body_start], &doc[end..]);
            std::fs::write(&path, updated).expect("rewriting docs/configuration.md");
            return;
        }
        panic!(
            "the config keys in docs/configuration.md are stale; regenerate them with \
             `JETBRIDGE_UPDATE_DOCS=1 cargo test -p jetbridge config_docs`\n\nwanted:\n{wanted}"
        );
    }
}
