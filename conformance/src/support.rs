//! What every case is made of: the case error, the assertion macros, outcomes and the
//! small helpers the suites share (unique names, timeouts, the test runner).

use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

use jetbridge_core::{Error, ErrorKind};

/// How long one case may run before it counts as failed. Live clusters pull images and
/// schedule pods, so this is generous; a fake finishes in milliseconds.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a case did not pass: it failed, or it did not apply (a capability is off).
#[derive(Debug, Clone)]
pub struct CaseError {
    message: String,
    file: &'static str,
    line: u32,
    skipped: bool,
}

impl CaseError {
    /// A failure at `file:line`.
    pub fn new(message: impl Into<String>, file: &'static str, line: u32) -> Self {
        CaseError {
            message: message.into(),
            file,
            line,
            skipped: false,
        }
    }

    /// A failure at the caller's location.
    #[track_caller]
    pub fn here(message: impl Into<String>) -> Self {
        let loc = Location::caller();
        Self::new(message, loc.file(), loc.line())
    }

    /// The case does not apply to this adapter (e.g. a capability is off).
    #[track_caller]
    pub fn skipped(reason: impl Into<String>) -> Self {
        CaseError {
            skipped: true,
            ..Self::here(reason)
        }
    }

    /// Whether this is a skip rather than a failure.
    pub fn is_skip(&self) -> bool {
        self.skipped
    }

    /// What went wrong (or why the case was skipped).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where the failure was detected.
    pub fn location(&self) -> (&'static str, u32) {
        (self.file, self.line)
    }

    /// Prefix the message with context.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for CaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            write!(f, "skipped: {}", self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for CaseError {}

impl From<Error> for CaseError {
    /// An unexpected port error; `?` on a port call reports where it happened.
    #[track_caller]
    fn from(e: Error) -> Self {
        CaseError::here(format!("unexpected error ({:?}): {e}", e.kind()))
    }
}

/// What a case returns.
pub type CaseResult = Result<(), CaseError>;

/// Fail the case unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr $(,)?) => {
        if !$cond {
            return Err($crate::CaseError::new(
                concat!("condition failed: ", stringify!($cond)),
                file!(),
                line!(),
            ));
        }
    };
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::CaseError::new(format!($($arg)+), file!(), line!()));
        }
    };
}

/// Fail the case unless both sides are equal (both must be `Debug + PartialEq`).
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr $(,)?) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    return Err($crate::CaseError::new(
                        format!(
                            "{} != {}\n  left: {:?}\n right: {:?}",
                            stringify!($left),
                            stringify!($right),
                            l,
                            r
                        ),
                        file!(),
                        line!(),
                    ));
                }
            }
        }
    };
    ($left:expr, $right:expr, $($arg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    return Err($crate::CaseError::new(
                        format!("{}\n  left: {:?}\n right: {:?}", format!($($arg)+), l, r),
                        file!(),
                        line!(),
                    ));
                }
            }
        }
    };
}

/// Fail the case unless `result` is an error whose kind matches the pattern
/// (`ErrorKind::NotFound`, or `ErrorKind::NotFound | ErrorKind::Conflict`). Evaluates to
/// the error. Never looks at message text.
#[macro_export]
macro_rules! ensure_kind {
    ($result:expr, $kind:pat $(,)?) => {
        match $result {
            Ok(_) => {
                return Err($crate::CaseError::new(
                    format!(
                        "{}: expected an error of kind {}, got Ok",
                        stringify!($result),
                        stringify!($kind)
                    ),
                    file!(),
                    line!(),
                ));
            }
            Err(e) => {
                let e: $crate::__private::Error = e;
                if !matches!(e.kind(), $kind) {
                    return Err($crate::CaseError::new(
                        format!(
                            "{}: expected an error of kind {}, got {:?}: {}",
                            stringify!($result),
                            stringify!($kind),
                            e.kind(),
                            e
                        ),
                        file!(),
                        line!(),
                    ));
                }
                e
            }
        }
    };
}

/// Fail the case now.
#[macro_export]
macro_rules! fail {
    ($($arg:tt)+) => {
        return Err($crate::CaseError::new(format!($($arg)+), file!(), line!()))
    };
}

/// End the case as skipped (it does not apply), printing why.
#[macro_export]
macro_rules! skip {
    ($($arg:tt)+) => {{
        let reason = format!($($arg)+);
        eprintln!("note: case skipped: {reason}");
        return Err($crate::CaseError::skipped(reason));
    }};
}

/// The result of one case in a report.
#[derive(Debug)]
pub struct CaseOutcome {
    /// Case name (also the test name the macros generate).
    pub name: &'static str,
    /// `Ok` when it passed; a skip or a failure otherwise.
    pub result: CaseResult,
    /// How long it ran.
    pub elapsed: Duration,
}

/// How a case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It passed.
    Passed,
    /// It did not apply.
    Skipped,
    /// It failed.
    Failed,
}

impl CaseOutcome {
    /// How the case ended.
    pub fn status(&self) -> Status {
        match &self.result {
            Ok(()) => Status::Passed,
            Err(e) if e.is_skip() => Status::Skipped,
            Err(_) => Status::Failed,
        }
    }
}

impl fmt::Display for CaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.result {
            Ok(()) => write!(f, "ok      {} ({:.1?})", self.name, self.elapsed),
            Err(e) if e.is_skip() => write!(f, "skipped {}: {}", self.name, e.message()),
            Err(e) => write!(f, "FAILED  {} ({:.1?}): {e}", self.name, self.elapsed),
        }
    }
}

/// Run one case future with [`CASE_TIMEOUT`], timing it.
pub async fn outcome(
    name: &'static str,
    case: impl Future<Output = Option<CaseResult>>,
) -> CaseOutcome {
    let start = Instant::now();
    let result = match tokio::time::timeout(CASE_TIMEOUT, case).await {
        Ok(Some(r)) => r,
        Ok(None) => Err(CaseError::here(format!("no case named {name}"))),
        Err(_) => Err(CaseError::here(format!(
            "case did not finish within {CASE_TIMEOUT:?}"
        ))),
    };
    CaseOutcome {
        name,
        result,
        elapsed: start.elapsed(),
    }
}

/// Build the runtime a generated test runs in: multi-threaded with two workers, like
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime can be built")
}

/// The body of every generated test: build the subject with `factory` (skipping when it
/// returns `None`), run the case, and panic with the case's message when it failed.
pub fn run_test<S, F, Fut, R, RFut>(suite: &str, name: &'static str, factory: F, run: R)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<S>>,
    R: FnOnce(S) -> RFut,
    RFut: Future<Output = Option<CaseResult>>,
{
    let rt = runtime();
    let out = rt.block_on(async move {
        let subject = factory().await?;
        Some(outcome(name, run(subject)).await)
    });
    let Some(out) = out else {
        eprintln!("note: {suite} case {name} did not run: no subject (see the SKIPPED line)");
        return;
    };
    match out.status() {
        Status::Passed => {}
        Status::Skipped => eprintln!("note: {suite} case {name}: {out}"),
        Status::Failed => panic!("{suite} conformance: {out}"),
    }
}

/// A fresh lowercase hex string of `n` (at most 32) digits, for unique names.
pub fn unique_hex(n: usize) -> String {
    let h = jetbridge_core::names::StepHandle::random();
    h.as_str()[..n.min(32)].to_owned()
}

/// Whether `kind` is one a caller should expect for a pod that is not running.
pub fn is_not_running_kind(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::NotFound | ErrorKind::Conflict)
}

/// Seconds from the environment variable `var`, or `default`.
pub fn env_duration(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(default)
}

/// The tree digest of the directory `root`, computed by a plain walk: a reference that
/// tests compare a store's, a copy's or a script's digest with. Symlinks are read, never
/// followed. Panics on an unreadable tree (it is a test helper).
pub fn dir_digest(root: &std::path::Path) -> jetbridge_core::digest::Digest {
    use jetbridge_core::digest::{TreeDigest, TreeEntry, sha256};
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &std::path::Path, rel: &str, t: &mut TreeDigest) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let e = e.expect("dir entry");
            let name = e.file_name().into_string().expect("UTF-8 name");
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let md = std::fs::symlink_metadata(e.path()).expect("lstat");
            let mode = md.permissions().mode();
            if md.is_dir() {
                t.add(&r, TreeEntry::Dir { mode });
                walk(root, &r, t);
            } else if md.is_file() {
                let data = std::fs::read(e.path()).expect("read");
                let h = sha256(&data);
                let size = data.len() as u64;
                t.add(
                    &r,
                    TreeEntry::File {
                        mode,
                        size,
                        sha256: &h,
                    },
                );
            } else {
                let target = std::fs::read_link(e.path()).expect("readlink");
                let target = target.to_str().expect("UTF-8 link");
                t.add(&r, TreeEntry::Symlink { target });
            }
        }
    }
    let mut t = TreeDigest::new();
    walk(root, "", &mut t);
    t.finish()
}
