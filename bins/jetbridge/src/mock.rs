//! The built-in `mock` resource: Concourse's test resource (`concourse/mock-resource`),
//! spoken by this binary when it is started as `check`, `in` or `out` (argv[0]'s file
//! name, as busybox does), so no shell and no other image is needed.
//!
//! On the local backend the wiring puts links named `check`, `in` and `out` to this
//! binary in a directory of the data dir, and the `mock` type runs them on the host. The
//! jetbridge image has the same links in `/opt/resource`, so on Kubernetes the `mock`
//! type (and `mock` task images) run in it.
//!
//! Behaviour, as the real resource's:
//! - `check`: `source.force_version` if set; else the version asked about; else, unless
//!   `source.no_initial_version`, `source.initial_version` (else `$MIRRORED_VERSION`,
//!   else `mock`). `source.check_delay` (a duration) sleeps first; `source.check_failure`
//!   fails with its message.
//! - `in DEST`: writes `DEST/version` (the version and a newline), `DEST/privileged`
//!   (`false`: jetbridge runs resource steps unprivileged), every file of
//!   `source.create_files` then `params.create_files_via_params` (the later wins; text
//!   as is, anything else as JSON; `START_VAR`/`END_VAR` become `((`/`))`), and with
//!   `source.mirror_self` or `params.mirror_self_via_params` an image: `DEST/rootfs/`
//!   and `DEST/metadata.json` (`MIRRORED_VERSION` in its env). The real resource copies
//!   its own root filesystem there; this one leaves `rootfs/` empty, since the local
//!   backend runs tasks on the host and Kubernetes runs them in the `mock` image.
//! - `out SRC`: the version is the contents of `SRC/params.file` (trimmed) if given,
//!   else `params.version`; none is an error. `params.print_env` logs the environment.
//! - Every answer's metadata is `source.metadata`; `source.log` is logged on every
//!   action. Unknown fields are refused, as the real resource's strict decoding does.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

/// The version `check` emits with no other instruction, as Concourse's.
const DEFAULT_INITIAL_VERSION: &str = "mock";

/// The names this binary answers to as the mock resource.
pub const SCRIPTS: [&str; 3] = ["check", "in", "out"];

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Source {
    mirror_self: bool,
    initial_version: String,
    no_initial_version: bool,
    force_version: String,
    create_files: BTreeMap<String, Value>,
    check_delay: String,
    check_failure: String,
    metadata: Option<Vec<Metadata>>,
    log: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    value: String,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
struct Version {
    version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    privileged: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GetParams {
    mirror_self_via_params: bool,
    create_files_via_params: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PutParams {
    version: String,
    print_env: bool,
    file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    version: Option<Version>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InRequest {
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    version: Option<Version>,
    #[serde(default)]
    params: Option<GetParams>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutRequest {
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    #[allow(dead_code)] // Accepted (Concourse sends none, others may), never used.
    version: Option<Version>,
    #[serde(default)]
    params: Option<PutParams>,
}

fn payload<T: for<'de> Deserialize<'de>>(stdin: &[u8]) -> anyhow::Result<T> {
    serde_json::from_slice(stdin).context("invalid payload")
}

/// `check`: the versions to report, oldest first (at most one).
fn check(stdin: &[u8], mirrored: Option<&str>, log: &mut dyn Write) -> anyhow::Result<Value> {
    let req: CheckRequest = payload(stdin)?;
    let source = req.source.unwrap_or_default();
    say(log, &source.log);
    if !source.check_delay.is_empty() {
        let delay = jetbridge_core::plan::parse_duration(&source.check_delay).map_err(|e| {
            anyhow::anyhow!(
                "malformed check_delay duration ({}): {e}",
                source.check_delay
            )
        })?;
        std::thread::sleep(delay);
    }
    if !source.check_failure.is_empty() {
        bail!("intentionally failing to check: {}", source.check_failure);
    }
    let versions = if !source.force_version.is_empty() {
        vec![Version {
            version: source.force_version,
            ..Version::default()
        }]
    } else if let Some(v) = req.version {
        vec![v]
    } else if !source.no_initial_version {
        let initial = if !source.initial_version.is_empty() {
            source.initial_version
        } else {
            mirrored
                .filter(|m| !m.is_empty())
                .unwrap_or(DEFAULT_INITIAL_VERSION)
                .to_owned()
        };
        vec![Version {
            version: initial,
            ..Version::default()
        }]
    } else {
        Vec::new()
    };
    Ok(serde_json::to_value(versions)?)
}

/// `in DEST`: the version's files in `dest`.
fn fetch(stdin: &[u8], dest: &Path, log: &mut dyn Write) -> anyhow::Result<Value> {
    let req: InRequest = payload(stdin)?;
    let source = req.source.unwrap_or_default();
    let params = req.params.unwrap_or_default();
    let version = req.version.unwrap_or_default();
    say(log, &source.log);
    std::fs::create_dir_all(dest)
        .with_context(|| format!("creating the destination {}", dest.display()))?;
    write(&dest.join("privileged"), b"false\n")?;
    say(log, &format!("fetching version: {}", version.version));
    write(
        &dest.join("version"),
        format!("{}\n", version.version).as_bytes(),
    )?;
    if source.mirror_self || params.mirror_self_via_params {
        say(log, "mirroring self image");
        let rootfs = dest.join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .with_context(|| format!("failed to create rootfs dir {}", rootfs.display()))?;
        let meta = json!({
            "env": [format!("MIRRORED_VERSION={}", version.version)],
            "user": "root",
        });
        write(&dest.join("metadata.json"), format!("{meta}\n").as_bytes())?;
    }
    let mut files = source.create_files;
    files.extend(params.create_files_via_params);
    for (path, content) in files {
        let text = match content {
            Value::String(s) => s,
            other => other.to_string(),
        };
        // Lets a pipeline write `((var))` into a file without it being interpolated.
        let text = text.replace("START_VAR", "((").replace("END_VAR", "))");
        let target = dest.join(inside(&path)?);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create directory '{}'", dir.display()))?;
        }
        write(&target, text.as_bytes())
            .with_context(|| format!("failed to write to file '{path}'"))?;
    }
    Ok(json!({ "version": version, "metadata": source.metadata }))
}

/// `out SRC`: the version to create.
fn push(
    stdin: &[u8],
    src: &Path,
    env: &[(OsString, OsString)],
    log: &mut dyn Write,
) -> anyhow::Result<Value> {
    let req: OutRequest = payload(stdin)?;
    let source = req.source.unwrap_or_default();
    let params = req.params.unwrap_or_default();
    say(log, &source.log);
    let version = if !params.file.is_empty() {
        let path = src.join(inside(&params.file)?);
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading the version from {}", params.file))?
            .trim()
            .to_owned()
    } else {
        params.version
    };
    if version.is_empty() {
        bail!("no version specified: give params.version or params.file");
    }
    say(log, &format!("pushing version: {version}"));
    if params.print_env {
        for (k, v) in env {
            say(
                log,
                &format!("env: {}={}", k.to_string_lossy(), v.to_string_lossy()),
            );
        }
    }
    let version = Version {
        version,
        ..Version::default()
    };
    Ok(json!({ "version": version, "metadata": source.metadata }))
}

/// `path` as a relative path under the step's directory. A leading `/` is dropped (as
/// joining does in Go); `..` is refused, since on the local backend it would write
/// outside the step's sandbox.
fn inside(path: &str) -> anyhow::Result<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        bail!("{path:?} leaves the step's directory");
    }
    Ok(rel.to_path_buf())
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn say(log: &mut dyn Write, line: &str) {
    if !line.is_empty() {
        // The step's log is best effort: the answer on stdout is what matters.
        let _ = writeln!(log, "{line}");
    }
}

/// `env NAME=VALUE... PROGRAM ARGS...`, the one form the Kubernetes backend execs step
/// commands through, for an image (the jetbridge image: distroless, no coreutils) whose
/// `/usr/bin/env` is this binary. Only returns on failure.
fn exec_env(args: impl Iterator<Item = OsString>) -> ExitCode {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let mut args = args.peekable();
    let mut vars = Vec::new();
    while let Some(a) = args.next_if(|a| a.as_bytes().contains(&b'=')) {
        let bytes = a.as_bytes();
        let at = bytes.iter().position(|b| *b == b'=').unwrap_or(bytes.len());
        let (k, v) = bytes.split_at(at);
        vars.push((
            std::ffi::OsStr::from_bytes(k).to_owned(),
            std::ffi::OsStr::from_bytes(&v[1..]).to_owned(),
        ));
    }
    let Some(program) = args.next() else {
        eprintln!("env: this env only runs a program: env NAME=VALUE... PROGRAM ARGS...");
        return ExitCode::from(125);
    };
    if program.as_bytes().starts_with(b"-") {
        eprintln!("env: options are not supported: env NAME=VALUE... PROGRAM ARGS...");
        return ExitCode::from(125);
    }
    let err = std::process::Command::new(&program)
        .args(args)
        .envs(vars)
        .exec();
    eprintln!("env: {}: {err}", program.to_string_lossy());
    // As coreutils' env: 127 when the program is missing, 126 when it cannot run.
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// When this process was started as `check`, `in` or `out`: act as the mock resource
/// and return its exit code (as `env`: run the command, see [`exec_env`]). Otherwise
/// `None`, and the CLI runs.
pub fn run_if_invoked_as_script() -> Option<ExitCode> {
    let mut args = std::env::args_os();
    let argv0 = args.next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?.to_owned();
    if name == "env" {
        return Some(exec_env(args));
    }
    if !SCRIPTS.contains(&name.as_str()) {
        return None;
    }
    let dir = args.next().map(PathBuf::from);
    let mut stdin = Vec::new();
    let mut stderr = std::io::stderr();
    let answer = std::io::stdin()
        .read_to_end(&mut stdin)
        .context("reading the request")
        .and_then(|_| match (name.as_str(), dir) {
            ("check", _) => check(
                &stdin,
                std::env::var("MIRRORED_VERSION").ok().as_deref(),
                &mut stderr,
            ),
            ("in", Some(dest)) => fetch(&stdin, &dest, &mut stderr),
            ("out", Some(src)) => {
                let env: Vec<_> = std::env::vars_os().collect();
                push(&stdin, &src, &env, &mut stderr)
            }
            ("in", None) => Err(anyhow::anyhow!("destination path not specified")),
            _ => Err(anyhow::anyhow!("source path not specified")),
        });
    Some(match answer {
        Ok(v) => {
            let mut out = std::io::stdout();
            match writeln!(out, "{v}").and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mock {name}: writing the answer: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(e) => {
            eprintln!("mock {name}: {e:#}");
            ExitCode::from(1)
        }
    })
}

/// Make `dir` hold `check`, `in` and `out` as links to `exe`, for the local backend to
/// run. Each link is made under a temporary name and renamed into place, so processes
/// sharing the data directory never see a half-made one.
pub fn install_scripts(dir: &Path, exe: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for name in SCRIPTS {
        let link = dir.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == exe) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(exe, &tmp)?;
        std::fs::rename(&tmp, &link)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_of(req: Value) -> anyhow::Result<Value> {
        check(req.to_string().as_bytes(), None, &mut Vec::new())
    }

    #[test]
    fn check_emits_the_initial_version_unless_told_otherwise() {
        assert_eq!(
            check_of(json!({"source": {}})).unwrap(),
            json!([{"version": "mock"}])
        );
        assert_eq!(
            check_of(json!({"source": {"initial_version": "v1"}, "version": null})).unwrap(),
            json!([{"version": "v1"}])
        );
        // A mirrored image's check starts from the version it was fetched at.
        let mirrored = check(br#"{"source": {}}"#, Some("m7"), &mut Vec::new()).unwrap();
        assert_eq!(mirrored, json!([{"version": "m7"}]));
        assert_eq!(
            check_of(json!({"source": {"no_initial_version": true}})).unwrap(),
            json!([])
        );
    }

    #[test]
    fn check_returns_the_version_asked_about_unless_one_is_forced() {
        let asked = json!({"source": {"initial_version": "v1"}, "version": {"version": "v9"}});
        assert_eq!(check_of(asked).unwrap(), json!([{"version": "v9"}]));
        let forced = json!({
            "source": {"force_version": "2025", "no_initial_version": true},
            "version": {"version": "v9"},
        });
        assert_eq!(check_of(forced).unwrap(), json!([{"version": "2025"}]));
    }

    #[test]
    fn check_fails_on_request_and_refuses_unknown_fields() {
        let err = check_of(json!({"source": {"check_failure": "boom"}})).unwrap_err();
        assert!(
            err.to_string()
                .contains("intentionally failing to check: boom")
        );
        let err = check_of(json!({"source": {"intial_version": "typo"}})).unwrap_err();
        assert!(format!("{err:#}").contains("intial_version"), "{err:#}");
        let err = check_of(json!({"source": {"check_delay": "soon"}})).unwrap_err();
        assert!(err.to_string().contains("check_delay"), "{err}");
        let quick = json!({"source": {"check_delay": "1ms", "force_version": "x"}});
        assert_eq!(check_of(quick).unwrap(), json!([{"version": "x"}]));
    }

    #[test]
    fn in_writes_the_version_and_the_files_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("res");
        let req = json!({
            "source": {
                "create_files": {"a.txt": "from source", "b.txt": "replaced", "obj.json": {"k": [1]}},
                "metadata": [{"name": "who", "value": "me"}],
                "log": "hello from the mock",
            },
            "version": {"version": "v3"},
            "params": {"create_files_via_params": {"b.txt": "from params", "deep/c.sh": "START_VAR.x END_VAR"}},
        });
        let mut log = Vec::new();
        let answer = fetch(req.to_string().as_bytes(), &dest, &mut log).unwrap();
        assert_eq!(
            answer,
            json!({"version": {"version": "v3"}, "metadata": [{"name": "who", "value": "me"}]})
        );
        let read = |p: &str| std::fs::read_to_string(dest.join(p)).unwrap();
        assert_eq!(read("version"), "v3\n");
        assert_eq!(read("privileged"), "false\n");
        assert_eq!(read("a.txt"), "from source");
        assert_eq!(read("b.txt"), "from params");
        assert_eq!(read("obj.json"), r#"{"k":[1]}"#);
        assert_eq!(read("deep/c.sh"), "((.x ))");
        assert!(!dest.join("rootfs").exists());
        let log = String::from_utf8(log).unwrap();
        assert!(log.contains("hello from the mock") && log.contains("fetching version: v3"));
    }

    #[test]
    fn in_mirrors_itself_as_an_image_when_asked() {
        for req in [
            json!({"source": {"mirror_self": true}, "version": {"version": "v1"}}),
            json!({"source": {}, "version": {"version": "v1"}, "params": {"mirror_self_via_params": true}}),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let answer = fetch(req.to_string().as_bytes(), dir.path(), &mut Vec::new()).unwrap();
            assert_eq!(answer["metadata"], Value::Null);
            assert!(dir.path().join("rootfs").is_dir());
            let meta: Value =
                serde_json::from_slice(&std::fs::read(dir.path().join("metadata.json")).unwrap())
                    .unwrap();
            assert_eq!(
                meta,
                json!({"env": ["MIRRORED_VERSION=v1"], "user": "root"})
            );
        }
    }

    #[test]
    fn in_refuses_unknown_params_and_paths_out_of_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let unknown = json!({"version": {"version": "v"}, "params": {"create_files": {}}});
        let err = fetch(unknown.to_string().as_bytes(), dir.path(), &mut Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains("create_files"), "{err:#}");
        let escape =
            json!({"version": {"version": "v"}, "source": {"create_files": {"../x": "y"}}});
        let err = fetch(escape.to_string().as_bytes(), dir.path(), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("leaves"), "{err}");
        assert!(!dir.path().parent().unwrap().join("x").exists());
    }

    #[test]
    fn out_creates_the_version_from_params_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("art")).unwrap();
        std::fs::write(dir.path().join("art/next"), "v8\n").unwrap();
        let put = |params: Value| {
            let req =
                json!({"source": {"metadata": [{"name": "n", "value": "v"}]}, "params": params});
            push(req.to_string().as_bytes(), dir.path(), &[], &mut Vec::new())
        };
        assert_eq!(
            put(json!({"version": "v7"})).unwrap(),
            json!({"version": {"version": "v7"}, "metadata": [{"name": "n", "value": "v"}]})
        );
        assert_eq!(
            put(json!({"file": "art/next", "version": "ignored"})).unwrap()["version"],
            json!({"version": "v8"})
        );
        let err = put(json!({})).unwrap_err();
        assert!(err.to_string().contains("no version specified"), "{err}");
        let err = put(json!({"file": "art/missing"})).unwrap_err();
        assert!(err.to_string().contains("art/missing"), "{err}");
        let err = put(json!({"verison": "typo"})).unwrap_err();
        assert!(format!("{err:#}").contains("verison"), "{err:#}");
    }

    #[test]
    fn out_prints_the_environment_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let env = [(OsString::from("GREETING"), OsString::from("hi"))];
        let mut log = Vec::new();
        let req = json!({"params": {"version": "v", "print_env": true}});
        push(req.to_string().as_bytes(), dir.path(), &env, &mut log).unwrap();
        assert!(String::from_utf8(log).unwrap().contains("env: GREETING=hi"));
    }

    #[test]
    fn scripts_are_links_to_the_binary_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let exe = Path::new("/usr/local/bin/jetbridge");
        install_scripts(dir.path(), exe).unwrap();
        install_scripts(dir.path(), exe).unwrap();
        for name in SCRIPTS {
            assert_eq!(std::fs::read_link(dir.path().join(name)).unwrap(), exe);
        }
        let other = Path::new("/opt/jetbridge-2");
        install_scripts(dir.path(), other).unwrap();
        assert_eq!(std::fs::read_link(dir.path().join("in")).unwrap(), other);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 3, "no temporary links are left behind");
    }
}
