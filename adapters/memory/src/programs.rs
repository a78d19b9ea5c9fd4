//! What runs when a fake pod execs a command: registered programs, resource programs of
//! the pod's image, the built-in commands (`sh` and friends, `tar`), shebang scripts
//! found in the pod's filesystem, and "command not found" for everything else.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use jetbridge_core::ports::{OutputSink, OutputStream};
use jetbridge_core::{Error, Result};

use crate::fs::{FILE_MODE, Node, PodFs, basename, join};
use crate::tar::{create, extract};
use crate::{commands, mock, shell};

/// The future a [`Program`] returns.
pub type ProgramFuture = Pin<Box<dyn Future<Output = Result<i32>> + Send + 'static>>;

type Handler = dyn Fn(ProgramContext) -> ProgramFuture + Send + Sync;

/// A program a fake pod can run: a closure given a [`ProgramContext`] that returns an
/// exit code.
#[derive(Clone)]
pub struct Program(Arc<Handler>);

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Program")
    }
}

impl Program {
    /// A program from an async closure.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(ProgramContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = i32> + Send + 'static,
    {
        Program(Arc::new(move |ctx| {
            let fut = f(ctx);
            Box::pin(async move { Ok(fut.await) })
        }))
    }

    /// A program from a plain closure.
    pub fn sync<F>(f: F) -> Self
    where
        F: Fn(&mut ProgramContext) -> i32 + Send + Sync + 'static,
    {
        Program(Arc::new(move |mut ctx| {
            let code = f(&mut ctx);
            Box::pin(async move { Ok(code) })
        }))
    }

    /// A program that may also fail the exec itself (an adapter-level error rather
    /// than an exit code).
    pub fn fallible<F, Fut>(f: F) -> Self
    where
        F: Fn(ProgramContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<i32>> + Send + 'static,
    {
        Program(Arc::new(move |ctx| Box::pin(f(ctx))))
    }

    pub(crate) fn call(&self, ctx: ProgramContext) -> ProgramFuture {
        (self.0)(ctx)
    }
}

/// Programs a resource image provides at `/opt/resource/{check,in,out}`.
#[derive(Debug, Clone, Default)]
pub struct ResourceScripts {
    /// `/opt/resource/check`.
    pub check: Option<Program>,
    /// `/opt/resource/in DEST`.
    pub in_: Option<Program>,
    /// `/opt/resource/out SRC`.
    pub out: Option<Program>,
}

/// Registered programs: by name or path, and per image by path.
#[derive(Debug, Default)]
pub(crate) struct ProgramTable {
    pub(crate) by_name: HashMap<String, Program>,
    pub(crate) by_image: HashMap<(String, String), Program>,
}

/// The repository part of an image reference: no tag, no digest, no `docker.io/` or
/// `library/` prefix, so `concourse/mock-resource:0.13` matches `concourse/mock-resource`.
pub(crate) fn image_repo(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let (head, last) = match no_digest.rfind('/') {
        Some(i) => (&no_digest[..=i], &no_digest[i + 1..]),
        None => ("", no_digest),
    };
    let last = last.split(':').next().unwrap_or(last);
    let full = format!("{head}{last}");
    let full = full.strip_prefix("docker.io/").unwrap_or(&full);
    let full = full.strip_prefix("library/").unwrap_or(full);
    full.to_owned()
}

/// State an exec shares with the programs it starts.
pub(crate) struct Sys {
    pub(crate) programs: Arc<Mutex<ProgramTable>>,
    pub(crate) image: String,
    pub(crate) pod: String,
    pub(crate) versions: Arc<std::sync::atomic::AtomicU64>,
    /// Set when this exec ran a registered or resource program, which a real shell
    /// would not have: such runs are not recorded for comparison.
    pub(crate) ran_program: std::sync::atomic::AtomicBool,
}

impl Sys {
    fn lookup(&self, argv0: &str) -> Option<Program> {
        let t = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = t.by_name.get(argv0) {
            return Some(p.clone());
        }
        if let Some(name) = system_path(argv0).filter(|n| *n != argv0)
            && let Some(p) = t.by_name.get(name)
        {
            return Some(p.clone());
        }
        if let Some(p) = t.by_image.get(&(image_repo(&self.image), argv0.to_owned())) {
            return Some(p.clone());
        }
        if image_repo(&self.image) == mock::MOCK_IMAGE {
            return mock::program(argv0);
        }
        None
    }
}

/// Where a program's output goes.
#[derive(Clone)]
pub struct Output {
    target: Target,
}

#[derive(Clone)]
enum Target {
    Sink(Arc<dyn OutputSink>, OutputStream),
    File(PodFs, String),
    Discard,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = match &self.target {
            Target::Sink(_, s) => format!("{s:?}"),
            Target::File(_, p) => format!("file {p}"),
            Target::Discard => "discard".into(),
        };
        f.debug_struct("Output").field("target", &t).finish()
    }
}

impl Output {
    pub(crate) fn sink(sink: Arc<dyn OutputSink>, stream: OutputStream) -> Self {
        Output {
            target: Target::Sink(sink, stream),
        }
    }

    pub(crate) fn file(fs: PodFs, abs_path: String) -> Self {
        Output {
            target: Target::File(fs, abs_path),
        }
    }

    /// Output that goes nowhere.
    pub fn discard() -> Self {
        Output {
            target: Target::Discard,
        }
    }

    /// Write bytes, as they are produced.
    pub fn write(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        match &self.target {
            Target::Sink(s, stream) => s.write(*stream, data),
            Target::File(fs, path) => {
                // The file was created when the redirection was set up; if it has
                // vanished since, the bytes are lost as they would be on a real system.
                let _ = fs.lock().write_file(path, data, true, FILE_MODE);
            }
            Target::Discard => {}
        }
    }

    /// Write a string.
    pub fn print(&self, s: &str) {
        self.write(s.as_bytes());
    }
}

/// What a program gets: its arguments, environment, working directory, stdin, the
/// pod's filesystem and its output streams.
pub struct ProgramContext {
    /// Arguments, `argv[0]` first.
    pub argv: Vec<String>,
    /// Environment (pod environment, then the exec's, then the shell's variables).
    pub env: BTreeMap<String, String>,
    /// Absolute working directory inside the pod.
    pub cwd: String,
    /// Everything on stdin.
    pub stdin: Bytes,
    /// The pod's filesystem.
    pub fs: PodFs,
    /// Standard output.
    pub stdout: Output,
    /// Standard error.
    pub stderr: Output,
    pub(crate) sys: Arc<Sys>,
}

impl fmt::Debug for ProgramContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Environment values may be secrets: names only.
        f.debug_struct("ProgramContext")
            .field("argv", &self.argv)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("cwd", &self.cwd)
            .field("stdin_bytes", &self.stdin.len())
            .finish()
    }
}

impl ProgramContext {
    /// The image of the pod the program runs in.
    pub fn image(&self) -> &str {
        &self.sys.image
    }

    /// The name of the pod the program runs in.
    pub fn pod(&self) -> &str {
        &self.sys.pod
    }

    /// The absolute path of `p` relative to the working directory.
    pub fn path(&self, p: &str) -> String {
        join(&self.cwd, p)
    }

    /// Read a file relative to the working directory.
    pub fn read(&self, p: &str) -> Result<Vec<u8>> {
        self.fs.read(&self.path(p))
    }

    /// Read a file relative to the working directory as UTF-8 (lossily).
    pub fn read_to_string(&self, p: &str) -> Result<String> {
        self.fs.read_to_string(&self.path(p))
    }

    /// Write a file relative to the working directory, creating parent directories.
    pub fn write(&self, p: &str, data: impl AsRef<[u8]>) -> Result<()> {
        self.fs.write(&self.path(p), data)
    }

    /// Stdin as UTF-8 (lossily).
    pub fn stdin_str(&self) -> String {
        String::from_utf8_lossy(&self.stdin).into_owned()
    }

    /// Print to stdout.
    pub fn print(&self, s: &str) {
        self.stdout.print(s);
    }

    /// Print to stderr.
    pub fn eprint(&self, s: &str) {
        self.stderr.print(s);
    }

    /// A context for running `argv` with the same environment and streams.
    pub(crate) fn child(&self, argv: Vec<String>) -> ProgramContext {
        ProgramContext {
            argv,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            stdin: self.stdin.clone(),
            fs: self.fs.clone(),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            sys: self.sys.clone(),
        }
    }
}

/// Directories whose commands are found by their bare name too (`/bin/echo`).
pub(crate) fn system_path(argv0: &str) -> Option<&str> {
    if !argv0.contains('/') {
        return Some(argv0);
    }
    [
        "/bin/",
        "/usr/bin/",
        "/usr/local/bin/",
        "/sbin/",
        "/usr/sbin/",
    ]
    .iter()
    .find_map(|d| argv0.strip_prefix(d))
    .filter(|n| !n.contains('/'))
}

/// Run `ctx.argv`.
pub(crate) fn run(ctx: ProgramContext) -> ProgramFuture {
    Box::pin(async move {
        let Some(argv0) = ctx.argv.first().cloned() else {
            return Err(Error::invalid("empty argv"));
        };
        if let Some(p) = ctx.sys.lookup(&argv0) {
            ctx.sys
                .ran_program
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return p.call(ctx).await;
        }
        match system_path(&argv0) {
            Some("sh" | "bash") => return shell::sh_main(ctx).await,
            Some("tar") => return tar_main(&ctx),
            Some(name) if commands::is_command(name) => {
                return commands::run(name, &ctx).await;
            }
            _ => {}
        }
        if argv0.contains('/') {
            return run_script_file(ctx, &argv0).await;
        }
        ctx.eprint(&format!("sh: {argv0}: command not found\n"));
        Ok(127)
    })
}

/// Run an executable file of the pod: a `#!` script for `sh` or `bash`.
async fn run_script_file(ctx: ProgramContext, argv0: &str) -> Result<i32> {
    let path = ctx.path(argv0);
    let node = ctx.fs.lock().stat(&path, true).cloned();
    let (mode, data) = match node {
        Some(Node::File { mode, data }) => (mode, data),
        Some(_) => {
            ctx.eprint(&format!("sh: {argv0}: Permission denied\n"));
            return Ok(126);
        }
        None => {
            ctx.eprint(&format!("sh: {argv0}: not found\n"));
            return Ok(127);
        }
    };
    if mode & 0o111 == 0 {
        ctx.eprint(&format!("sh: {argv0}: Permission denied\n"));
        return Ok(126);
    }
    let text = String::from_utf8_lossy(&data).into_owned();
    let first = text.lines().next().unwrap_or("");
    let interp = first.strip_prefix("#!").map(str::trim).unwrap_or("");
    let mut words = interp.split_whitespace();
    let prog = words.next().map(basename);
    let prog = if prog == Some("env") {
        words.next()
    } else {
        prog
    };
    if !matches!(prog, Some("sh" | "bash")) {
        ctx.eprint(&format!(
            "sh: {argv0}: cannot execute: only #!/bin/sh scripts run in memory pods\n"
        ));
        return Ok(126);
    }
    let args = ctx.argv.clone();
    shell::run_script(ctx, &text, args).await
}

/// `tar -x -f -` and `tar -c -f - PATH...` against the pod filesystem.
fn tar_main(ctx: &ProgramContext) -> Result<i32> {
    let mut extract_mode = None;
    let mut file = None;
    let mut dir = ctx.cwd.clone();
    let mut operands = Vec::new();
    let mut args = ctx.argv[1..].iter();
    let mut first = true;
    while let Some(a) = args.next() {
        // The first argument may be a bundle of flags without a dash (`tar xf -`).
        let flags = if let Some(f) = a.strip_prefix('-').filter(|f| !f.is_empty()) {
            Some(f)
        } else if first && !a.is_empty() && a.chars().all(|c| "xcfvp".contains(c)) {
            Some(a.as_str())
        } else {
            None
        };
        first = false;
        let Some(flags) = flags else {
            operands.push(a.clone());
            continue;
        };
        if flags == "C" {
            let Some(d) = args.next() else {
                ctx.eprint("tar: option requires an argument -- 'C'\n");
                return Ok(2);
            };
            dir = ctx.path(d);
            continue;
        }
        for c in flags.chars() {
            match c {
                'x' => extract_mode = Some(true),
                'c' => extract_mode = Some(false),
                'f' => file = args.next().cloned(),
                'v' | 'p' => {}
                other => {
                    ctx.eprint(&format!("tar: unsupported option -- '{other}'\n"));
                    return Ok(2);
                }
            }
        }
    }
    if file.as_deref() != Some("-") {
        ctx.eprint("tar: only '-f -' (stdin or stdout) is supported\n");
        return Ok(2);
    }
    match extract_mode {
        Some(true) => {
            let mut fs = ctx.fs.lock();
            let base = fs.resolve(&dir, true).map_err(|e| e.into_error(&dir))?;
            if !fs.is_dir(&dir) {
                drop(fs);
                ctx.eprint(&format!("tar: {dir}: Cannot open: Not a directory\n"));
                return Ok(2);
            }
            // Extract into a copy so a rejected archive leaves nothing behind.
            let mut staged = fs.clone();
            extract(&mut staged, &base, &ctx.stdin)?;
            *fs = staged;
            Ok(0)
        }
        Some(false) => {
            if operands.is_empty() {
                ctx.eprint("tar: Cowardly refusing to create an empty archive\n");
                return Ok(2);
            }
            let data = {
                let fs = ctx.fs.lock();
                if operands.len() == 1 && matches!(operands[0].as_str(), "." | "./") {
                    create(&fs, &dir, true)?
                } else {
                    archive_operands(&fs, &dir, &operands)?
                }
            };
            ctx.stdout.write(&data);
            Ok(0)
        }
        None => {
            ctx.eprint("tar: You must specify one of the '-c' or '-x' options\n");
            Ok(2)
        }
    }
}

/// A tar of several paths under `dir`, named as given.
fn archive_operands(fs: &crate::fs::MemFs, dir: &str, operands: &[String]) -> Result<Vec<u8>> {
    let mut staged = crate::fs::MemFs::new();
    for op in operands {
        let src = join(dir, op);
        let rel = join("/", op);
        let node = fs
            .stat(&src, false)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("tar: {op}: No such file or directory")))?;
        staged
            .mkdir(&join(&rel, ".."), true, crate::fs::DIR_MODE)
            .map_err(|e| e.into_error(op))?;
        let entries = match node {
            Node::Dir { .. } => fs.subtree(&src).map_err(|e| e.into_error(op))?,
            _ => Vec::new(),
        };
        staged
            .put_subtree(&rel, node, entries)
            .map_err(|e| e.into_error(op))?;
    }
    create(&staged, "/", false)
}
