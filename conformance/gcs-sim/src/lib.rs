//! A simulator of the Google Cloud Storage XML API, good enough for
//! `object_store`'s GCS client to talk to unmodified: objects (simple uploads with
//! preconditions, copies, ranged reads, deletes), `list-type=2` listings with
//! prefixes, delimiters and pagination, and XML multipart uploads, in memory,
//! over path-style URLs `http://127.0.0.1:PORT/{bucket}/{object}`. Requests are not
//! authenticated: any `Authorization` header, or none, is accepted.
//!
//! Faults are injected from the [`Simulator`] handle ([`Fault`]): error statuses,
//! dropped connections, delays.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use jetbridge_gcs_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default().with_bucket("my-bucket")).await?;
//! let url = sim.url(); // http://127.0.0.1:PORT, the GCS base URL
//! # let _ = url;
//! sim.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod api;
mod error;
mod state;
mod store;
mod util;
mod xml;

use bytes::Bytes;
use state::{Shared, lock};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Buckets that exist from the start (more can be made with `PUT /{bucket}`).
    pub buckets: Vec<String>,
    /// Port to listen on; 0 picks a free one.
    pub port: u16,
    /// Smallest size of every part of a multipart upload but the last, checked on
    /// completion (`EntityTooSmall`). Cloud Storage's is 5 MiB.
    pub min_part_size: usize,
    /// Most entries (objects and prefixes) one listing page returns, whatever
    /// `max-keys` asks. Cloud Storage's is 1000; lower it to exercise pagination.
    pub max_keys: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            buckets: Vec::new(),
            port: 0,
            min_part_size: 5 << 20,
            max_keys: 1000,
        }
    }
}

impl SimConfig {
    /// Add a bucket that exists from the start.
    pub fn with_bucket(mut self, name: impl Into<String>) -> Self {
        self.buckets.push(name.into());
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// HTTP method, e.g. `PUT`.
    pub method: String,
    /// Raw request path, percent-encoded as sent, e.g. `/bucket/a%2Fb`.
    pub path: String,
    /// Raw query string (empty when none), e.g. `partNumber=1&uploadId=...`.
    pub query: String,
    /// The decoded object name, for requests on an object.
    pub object: Option<String>,
}

/// Injected faults and the test controls. Here `FaultAction::Status(code)` answers an
/// XML `<Error>` whose `Code` Cloud Storage uses for it (500 `InternalError`, 503
/// `ServiceUnavailable`, 429 `SlowDown`, 408 `RequestTimeout`, 403 `AccessDenied`, ...).
pub use jetbridge_sim_http::{Fault, FaultAction, SimControls};

/// A stored object, as the control handle shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object name.
    pub name: String,
    /// Content.
    pub data: Bytes,
    /// Generation (from the clock, in microseconds, strictly increasing).
    pub generation: u64,
    /// Metageneration (always 1: metadata updates are not simulated).
    pub metageneration: u64,
    /// `ETag`, quoted.
    pub etag: String,
    /// `Content-Type`.
    pub content_type: String,
    /// `x-goog-meta-*` metadata: lowercase suffix and value.
    pub metadata: Vec<(String, String)>,
    /// Number of parts, for objects assembled by a multipart upload.
    pub components: Option<usize>,
}

/// A multipart upload in progress (initiated, neither completed nor aborted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// The upload ID.
    pub upload_id: String,
    /// Bucket.
    pub bucket: String,
    /// Object name it will create.
    pub object: String,
    /// Part numbers uploaded so far, ascending.
    pub parts: Vec<u32>,
    /// Bytes in those parts.
    pub bytes: u64,
}

/// Handle to a running simulator; cheap to clone.
#[derive(Debug, Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
    server: Arc<tokio::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl SimControls for Simulator {
    type Request = RequestRecord;

    fn controls(&self) -> &jetbridge_sim_http::Controls<RequestRecord> {
        &self.shared.controls
    }
}

impl Simulator {
    /// Start a simulator on 127.0.0.1 (plain HTTP/1.1), on `config.port` or a free
    /// port, with `config.buckets`. A bucket name Cloud Storage would refuse is
    /// `InvalidInput`.
    pub async fn start(config: SimConfig) -> std::io::Result<Simulator> {
        let mut st = store::Store::default();
        for b in &config.buckets {
            if !store::valid_bucket_name(b) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid bucket name {b:?}"),
                ));
            }
            st.create_bucket(b);
        }
        let listener = jetbridge_sim_http::bind(config.port)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            config,
            store: Mutex::new(st),
            controls: jetbridge_sim_http::Controls::default(),
            port,
            stop: CancellationToken::new(),
        });
        // Cancelling `stop` stops accepting and ends every connection.
        let task = jetbridge_sim_http::serve(
            api::router(shared.clone()),
            listener,
            shared.stop.clone(),
            false,
        );
        Ok(Simulator {
            shared,
            server: Arc::new(tokio::sync::Mutex::new(Some(task))),
        })
    }

    /// Base URL, `http://127.0.0.1:PORT` (object_store's `google_base_url`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.shared.port)
    }

    /// The port the simulator listens on.
    pub fn port(&self) -> u16 {
        self.shared.port
    }

    /// Create a bucket; `false` when it already exists.
    pub fn create_bucket(&self, name: &str) -> bool {
        lock(&self.shared.store).create_bucket(name)
    }

    /// Names of the buckets.
    pub fn buckets(&self) -> Vec<String> {
        lock(&self.shared.store).buckets.keys().cloned().collect()
    }

    /// The objects of a bucket, by name (none when the bucket does not exist).
    /// Parts of unfinished uploads are not objects and never appear here.
    pub fn objects(&self, bucket: &str) -> Vec<ObjectInfo> {
        lock(&self.shared.store)
            .buckets
            .get(bucket)
            .map(|b| b.objects.iter().map(|(n, o)| info(n, o)).collect())
            .unwrap_or_default()
    }

    /// One object, if it exists.
    pub fn object(&self, bucket: &str, name: &str) -> Option<ObjectInfo> {
        let store = lock(&self.shared.store);
        let o = store.buckets.get(bucket)?.objects.get(name)?;
        Some(info(name, o))
    }

    /// Multipart uploads initiated and neither completed nor aborted, oldest first.
    pub fn in_progress_uploads(&self) -> Vec<UploadInfo> {
        lock(&self.shared.store)
            .uploads()
            .into_iter()
            .map(|u| UploadInfo {
                upload_id: u.id,
                bucket: u.bucket,
                object: u.object,
                parts: u.parts,
                bytes: u.bytes,
            })
            .collect()
    }

    /// Stop listening and end every connection.
    pub async fn shutdown(self) {
        self.shared.stop.cancel();
        if let Some(task) = self.server.lock().await.take() {
            let _ = task.await;
        }
    }
}

fn info(name: &str, o: &store::Object) -> ObjectInfo {
    ObjectInfo {
        name: name.to_owned(),
        data: o.data.clone(),
        generation: o.generation,
        metageneration: o.metageneration,
        etag: o.etag.clone(),
        content_type: o.content_type().to_owned(),
        metadata: o.meta.custom.clone(),
        components: o.components,
    }
}

fn usage() -> &'static str {
    "usage: gcs-sim [--port P] [--bucket NAME]... [--min-part-size BYTES] [--max-keys N]\n\
     Runs a Cloud Storage XML API simulator on 127.0.0.1 until killed; prints its URL."
}

/// Command line entry point: `[--port P] [--bucket NAME]... [--min-part-size BYTES]
/// [--max-keys N]`. Prints the URL and runs until Ctrl-C or SIGTERM.
pub fn run_cli() -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut args = std::env::args().skip(1);
    let mut config = SimConfig::default();
    while let Some(a) = args.next() {
        let number = |v: Option<String>| v.and_then(|p| p.parse::<usize>().ok());
        match a.as_str() {
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => config.port = p,
                None => {
                    eprintln!("--port needs a number\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--bucket" => match args.next() {
                Some(b) => config.buckets.push(b),
                None => {
                    eprintln!("--bucket needs a name\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--min-part-size" => match number(args.next()) {
                Some(n) => config.min_part_size = n,
                None => {
                    eprintln!("--min-part-size needs a number\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "--max-keys" => match number(args.next()) {
                Some(n) if n > 0 => config.max_keys = n,
                _ => {
                    eprintln!("--max-keys needs a positive number\n{}", usage());
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let sim = match Simulator::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("cannot start the simulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", sim.url());
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot watch SIGTERM: {e}");
                    sim.shutdown().await;
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}
