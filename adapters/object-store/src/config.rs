//! Store URLs, options and building the object store behind them.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jetbridge_core::{Error, Result};
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::error::{Backend, store_err};

/// How volume data objects are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// zstd at this level (1-22), with a frame checksum.
    Zstd {
        /// Compression level.
        level: i32,
    },
}

impl Compression {
    /// zstd at level 1: on two cores it compresses about four times faster than
    /// level 3 (270 against 65 MiB/s on hard-to-compress data) for 10% less ratio
    /// on source trees, so it keeps up with a bucket's bandwidth.
    pub const DEFAULT: Compression = Compression::Zstd { level: 1 };

    /// The data object's file name suffix.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Zstd { .. } => "tar.zst",
        }
    }

    /// The name recorded in manifests.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd { .. } => "zstd",
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Bounded retries of failed requests (server errors, dropped connections, timeouts),
/// done by the object store client before an error is reported as `Transient`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff; doubled per retry, with jitter.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn to_config(self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
        }
    }
}

/// Options for [`crate::ObjectStoreVolumes::from_url`]. Credentials are not options:
/// each provider's usual chain is used (see the crate README); `config` can still
/// pass any `object_store` configuration key, and its values never appear in `Debug`.
#[derive(Clone)]
pub struct ObjectStoreOptions {
    /// Compression of data objects.
    pub compression: Compression,
    /// Another endpoint than the provider's (an emulator, MinIO, a private endpoint).
    pub endpoint: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
    /// Region (S3).
    pub region: Option<String>,
    /// Send requests without credentials (public buckets, emulators).
    pub anonymous: bool,
    /// Retries of failed requests.
    pub retry: RetryPolicy,
    /// Size of one multipart part (at least 5 MiB for S3 and GCS).
    pub part_size: usize,
    /// Parts uploading at once; memory use of a write is about
    /// `part_size * (parts_in_flight + 1)`.
    pub parts_in_flight: usize,
    /// zstd's own worker threads besides the compressing stage's thread (0: none,
    /// right for two cores; more only pays on machines with cores to spare).
    pub zstd_workers: u32,
    /// Where `read_tar` keeps the downloaded object while verifying it (default: the
    /// system temporary directory).
    pub temp_dir: Option<PathBuf>,
    /// Extra `object_store` configuration keys for the provider's builder (e.g.
    /// `aws_access_key_id`, `google_service_account_key`). Values are secret.
    pub config: Vec<(String, String)>,
}

impl fmt::Debug for ObjectStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.config.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ObjectStoreOptions")
            .field("compression", &self.compression)
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("region", &self.region)
            .field("anonymous", &self.anonymous)
            .field("retry", &self.retry)
            .field("part_size", &self.part_size)
            .field("parts_in_flight", &self.parts_in_flight)
            .field("zstd_workers", &self.zstd_workers)
            .field("temp_dir", &self.temp_dir)
            .field("config_keys", &keys)
            .finish()
    }
}

impl Default for ObjectStoreOptions {
    fn default() -> Self {
        ObjectStoreOptions {
            compression: Compression::DEFAULT,
            endpoint: None,
            allow_http: false,
            region: None,
            anonymous: false,
            retry: RetryPolicy::default(),
            part_size: 8 << 20,
            parts_in_flight: 4,
            zstd_workers: 0,
            temp_dir: None,
            config: Vec::new(),
        }
    }
}

impl ObjectStoreOptions {
    /// Set [`Self::compression`].
    pub fn with_compression(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
    /// Set [`Self::endpoint`].
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }
    /// Set [`Self::allow_http`].
    pub fn with_allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }
    /// Set [`Self::region`].
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
    /// Set [`Self::anonymous`].
    pub fn with_anonymous(mut self, anonymous: bool) -> Self {
        self.anonymous = anonymous;
        self
    }
    /// Set [`Self::retry`].
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
    /// Set [`Self::part_size`] and [`Self::parts_in_flight`].
    pub fn with_parts(mut self, part_size: usize, in_flight: usize) -> Self {
        self.part_size = part_size.max(1);
        self.parts_in_flight = in_flight.max(1);
        self
    }
    /// Set [`Self::zstd_workers`].
    pub fn with_zstd_workers(mut self, workers: u32) -> Self {
        self.zstd_workers = workers;
        self
    }
    /// Set [`Self::temp_dir`].
    pub fn with_temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = Some(dir.into());
        self
    }
    /// Add an `object_store` configuration key.
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }
}

/// The object store a URL names, the key prefix inside it and its kind.
pub(crate) struct Built {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: Path,
    pub backend: Backend,
    pub persistent: bool,
    /// The URL with credentials and query removed, for logs.
    pub display: String,
}

fn invalid(url: &str, why: impl fmt::Display) -> Error {
    Error::invalid(format!("object store URL {url:?}: {why}"))
}

fn client_options(o: &ObjectStoreOptions) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(o.allow_http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(120))
}

fn prefix_of(url: &str, path: &str) -> Result<Path> {
    let p = path.trim_matches('/');
    Path::parse(p).map_err(|e| invalid(url, format!("bad prefix {p:?}: {e}")))
}

fn config_err(url: &str, e: object_store::Error) -> Error {
    // Configuration problems (missing region, bad key) are not retryable.
    let kind = match crate::error::kind_of(&e, Backend::Http) {
        jetbridge_core::ErrorKind::Transient => jetbridge_core::ErrorKind::Other,
        k => k,
    };
    Error::new(kind, format!("object store {url:?}: {e}"))
}

/// Build the store a URL names.
pub(crate) fn build(url: &str, o: &ObjectStoreOptions) -> Result<Built> {
    let parsed = url::Url::parse(url).map_err(|e| invalid(url, e))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        // Credentials never travel in the URL (it ends up in logs).
        return Err(Error::invalid(
            "object store URLs carry no credentials; use the provider's credential chain",
        ));
    }
    let scheme = parsed.scheme().to_owned();
    let host = parsed.host_str().unwrap_or("").to_owned();
    let display = format!("{scheme}://{host}{}", parsed.path());
    let retry = o.retry.to_config();
    match scheme.as_str() {
        "memory" => Ok(Built {
            store: Arc::new(InMemory::new()),
            prefix: prefix_of(url, &format!("{host}{}", parsed.path()))?,
            backend: Backend::Memory,
            persistent: false,
            display,
        }),
        "file" => {
            if !host.is_empty() && host != "localhost" {
                return Err(invalid(
                    url,
                    "file URLs name a local directory: file:///abs/dir",
                ));
            }
            let dir = parsed
                .to_file_path()
                .map_err(|()| invalid(url, "not an absolute local path"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| crate::error::io_err(e, format_args!("creating {}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| store_err(e, Backend::Local, "opening the directory"))?
                .with_automatic_cleanup(true);
            Ok(Built {
                store: Arc::new(fs),
                prefix: Path::default(),
                backend: Backend::Local,
                persistent: true,
                display,
            })
        }
        "gs" => {
            if host.is_empty() {
                return Err(invalid(url, "no bucket"));
            }
            // Anonymous means no credentials at all: the environment's are not read
            // (a service account there would clash with the empty key below).
            let base = if o.anonymous {
                GoogleCloudStorageBuilder::new()
            } else {
                GoogleCloudStorageBuilder::from_env()
            };
            let mut b = base
                .with_bucket_name(&host)
                .with_retry(retry)
                .with_client_options(client_options(o));
            for (k, v) in &o.config {
                let key = k.parse().map_err(|e| config_err(url, e))?;
                b = b.with_config(key, v);
            }
            if let Some(ep) = &o.endpoint {
                b = b.with_base_url(ep);
            }
            if o.anonymous {
                // An empty token and no OAuth exchange: what emulators expect.
                let fake = serde_json::json!({
                    "private_key": "", "private_key_id": "", "client_email": "",
                    "disable_oauth": true,
                });
                b = b.with_service_account_key(fake.to_string());
            }
            Ok(Built {
                store: Arc::new(b.build().map_err(|e| config_err(url, e))?),
                prefix: prefix_of(url, parsed.path())?,
                backend: Backend::Http,
                persistent: true,
                display,
            })
        }
        "s3" => {
            if host.is_empty() {
                return Err(invalid(url, "no bucket"));
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&host)
                .with_retry(retry)
                .with_client_options(client_options(o))
                .with_allow_http(o.allow_http);
            for (k, v) in &o.config {
                let key = k.parse().map_err(|e| config_err(url, e))?;
                b = b.with_config(key, v);
            }
            if let Some(ep) = &o.endpoint {
                b = b.with_endpoint(ep);
            }
            if let Some(r) = &o.region {
                b = b.with_region(r);
            }
            if o.anonymous {
                b = b.with_skip_signature(true);
            }
            Ok(Built {
                store: Arc::new(b.build().map_err(|e| config_err(url, e))?),
                prefix: prefix_of(url, parsed.path())?,
                backend: Backend::Http,
                persistent: true,
                display,
            })
        }
        "az" | "azure" => {
            if host.is_empty() {
                return Err(invalid(url, "no container"));
            }
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_container_name(&host)
                .with_retry(retry)
                .with_client_options(client_options(o))
                .with_allow_http(o.allow_http);
            for (k, v) in &o.config {
                let key = k.parse().map_err(|e| config_err(url, e))?;
                b = b.with_config(key, v);
            }
            if let Some(ep) = &o.endpoint {
                b = b.with_endpoint(ep.clone());
            }
            if o.anonymous {
                b = b.with_skip_signature(true);
            }
            Ok(Built {
                store: Arc::new(b.build().map_err(|e| config_err(url, e))?),
                prefix: prefix_of(url, parsed.path())?,
                backend: Backend::Http,
                persistent: true,
                display,
            })
        }
        other => Err(invalid(
            url,
            format!("unknown scheme {other:?}; use gs://, s3://, az://, file:// or memory://"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ErrorKind;

    #[test]
    fn urls_pick_backends_and_prefixes() {
        let o = ObjectStoreOptions::default();
        let m = build("memory://", &o).unwrap();
        assert_eq!(m.backend, Backend::Memory);
        assert!(!m.persistent);
        let s3 = build(
            "s3://bucket/some/prefix/",
            &o.clone()
                .with_region("eu-west-1")
                .with_config("aws_access_key_id", "AKIDEXAMPLE")
                .with_config("aws_secret_access_key", "secret"),
        )
        .unwrap();
        assert_eq!(s3.prefix.as_ref(), "some/prefix");
        assert_eq!(s3.backend, Backend::Http);
        let t = tempfile::tempdir().unwrap();
        let url = format!("file://{}/store", t.path().display());
        let f = build(&url, &o).unwrap();
        assert_eq!(f.backend, Backend::Local);
        assert!(t.path().join("store").is_dir());
    }

    #[test]
    fn bad_urls_are_invalid() {
        let o = ObjectStoreOptions::default();
        for url in [
            "ftp://x/y",
            "s3:///nobucket",
            "not a url",
            "file://remotehost/x",
            "s3://user:pass@bucket/p",
        ] {
            let e = build(url, &o)
                .err()
                .unwrap_or_else(|| panic!("{url} built"));
            assert_eq!(e.kind(), ErrorKind::Invalid, "{url}: {e}");
        }
    }

    #[test]
    fn debug_hides_config_values() {
        let o = ObjectStoreOptions::default().with_config("aws_secret_access_key", "hunter2");
        let s = format!("{o:?}");
        assert!(s.contains("aws_secret_access_key"));
        assert!(!s.contains("hunter2"));
    }
}
