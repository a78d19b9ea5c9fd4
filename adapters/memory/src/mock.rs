//! A built-in stand-in for Concourse's `mock` resource (image `concourse/mock-resource`).
//!
//! - `check`: `source.check_failure` fails; `source.force_version` is the only version;
//!   otherwise the requested version, or `source.initial_version` (default `"1"`) unless
//!   `source.no_initial_version`.
//! - `in DEST`: writes `DEST/version`, then the files of `source.create_files` and
//!   `params.create_files` (`{path: content}`), and prints the version.
//! - `out SRC`: `params.version`, else the content of `SRC/<params.file>`, else a fresh
//!   version (`out-1`, `out-2`, ...).

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::programs::{Program, ProgramContext};

/// The image the built-in mock resource answers for (any tag).
pub(crate) const MOCK_IMAGE: &str = "concourse/mock-resource";

/// The mock program at `path`, if there is one.
pub(crate) fn program(path: &str) -> Option<Program> {
    match path {
        "/opt/resource/check" => Some(Program::sync(check)),
        "/opt/resource/in" => Some(Program::sync(get)),
        "/opt/resource/out" => Some(Program::sync(put)),
        _ => None,
    }
}

fn request(ctx: &ProgramContext) -> Result<Value, i32> {
    if ctx.stdin.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&ctx.stdin).map_err(|e| {
        ctx.eprint(&format!("invalid request on stdin: {e}\n"));
        1
    })
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn initial(source: &Value) -> Value {
    json!({ "version": source.get("initial_version").map_or_else(|| "1".to_owned(), as_text) })
}

fn check(ctx: &mut ProgramContext) -> i32 {
    let req = match request(ctx) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let source = req.get("source").cloned().unwrap_or(Value::Null);
    if let Some(msg) = source.get("check_failure") {
        ctx.eprint(&format!("{}\n", as_text(msg)));
        return 1;
    }
    let versions = if let Some(v) = source.get("force_version") {
        vec![json!({ "version": as_text(v) })]
    } else if let Some(v) = req.get("version").filter(|v| v.is_object()) {
        vec![v.clone()]
    } else if source.get("no_initial_version") == Some(&Value::Bool(true)) {
        Vec::new()
    } else {
        vec![initial(&source)]
    };
    ctx.print(&format!("{}\n", Value::Array(versions)));
    0
}

/// A relative path without `..`, so created files stay inside the destination.
fn safe_rel(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|c| c == "..")
}

fn get(ctx: &mut ProgramContext) -> i32 {
    let req = match request(ctx) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let Some(dest) = ctx.argv.get(1).cloned() else {
        ctx.eprint("usage: /opt/resource/in DEST\n");
        return 1;
    };
    let source = req.get("source").cloned().unwrap_or(Value::Null);
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    let version = req
        .get("version")
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| initial(&source));
    let dest = ctx.path(&dest);
    let mut files = vec![(
        "version".to_owned(),
        version
            .get("version")
            .map_or_else(|| version.to_string(), as_text),
    )];
    for map in [source.get("create_files"), params.get("create_files")]
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
    {
        for (path, content) in map {
            files.push((path.clone(), as_text(content)));
        }
    }
    for (path, content) in files {
        if !safe_rel(&path) {
            ctx.eprint(&format!(
                "refusing to create {path:?} outside the destination\n"
            ));
            return 1;
        }
        if let Err(e) = ctx.fs.write(&crate::fs::join(&dest, &path), content) {
            ctx.eprint(&format!("creating {path}: {e}\n"));
            return 1;
        }
    }
    let out = json!({
        "version": version,
        "metadata": [{ "name": "mock", "value": "true" }],
    });
    ctx.print(&format!("{out}\n"));
    0
}

fn put(ctx: &mut ProgramContext) -> i32 {
    let req = match request(ctx) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    let src = ctx.argv.get(1).cloned().unwrap_or_else(|| ".".into());
    let version = if let Some(v) = params.get("version") {
        as_text(v)
    } else if let Some(f) = params.get("file").map(as_text) {
        if !safe_rel(&f) {
            ctx.eprint(&format!("refusing to read {f:?} outside the sources\n"));
            return 1;
        }
        match ctx.fs.read_to_string(&crate::fs::join(&ctx.path(&src), &f)) {
            Ok(s) => s.trim().to_owned(),
            Err(e) => {
                ctx.eprint(&format!("reading {f}: {e}\n"));
                return 1;
            }
        }
    } else {
        let n = ctx.sys.versions.fetch_add(1, Ordering::Relaxed) + 1;
        format!("out-{n}")
    };
    let out = json!({
        "version": { "version": version },
        "metadata": [{ "name": "mock", "value": "true" }],
    });
    ctx.print(&format!("{out}\n"));
    0
}
