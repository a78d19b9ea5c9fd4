//! Helpers shared by the integration tests: a simulator, an `object_store` client
//! for it, and a raw HTTP/1.1 client for wire-level checks.
#![allow(dead_code)]

use jetbridge_gcs_sim::{SimConfig, Simulator};
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const BUCKET: &str = "jb-test";

pub async fn start() -> Simulator {
    start_with(SimConfig::default()).await
}

pub async fn start_with(config: SimConfig) -> Simulator {
    Simulator::start(config.with_bucket(BUCKET))
        .await
        .expect("start simulator")
}

/// Fast retries, so fault tests do not wait.
pub fn retry(max_retries: usize) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            base: 2.0,
        },
        max_retries,
        retry_timeout: Duration::from_secs(20),
    }
}

/// object_store's GCS client for the simulator, without credentials: a service
/// account key with `disable_oauth` gives an empty token and no OAuth exchange
/// (`with_skip_signature` alone still asks the metadata server for a token on
/// writes).
pub fn gcs(sim: &Simulator, retries: usize) -> GoogleCloudStorage {
    let key = r#"{"private_key":"","private_key_id":"","client_email":"","disable_oauth":true}"#;
    GoogleCloudStorageBuilder::new()
        .with_bucket_name(BUCKET)
        .with_base_url(&sim.url())
        .with_service_account_key(key)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .with_retry(retry(retries))
        .build()
        .expect("client")
}

/// A raw HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of a header (names compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The text of the first `<tag>` element of the body.
    pub fn xml(&self, tag: &str) -> Option<String> {
        xml_all(&self.text(), tag).into_iter().next()
    }
    /// The `<Code>` of an `<Error>` body.
    pub fn code(&self) -> Option<String> {
        self.xml("Code")
    }
}

/// The texts of every `<tag>` element (no nesting of the same tag).
pub fn xml_all(doc: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(
            rest[..j]
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&amp;", "&"),
        );
        rest = &rest[j + close.len()..];
    }
    out
}

/// Send one request exactly as given (`target` is the raw path and query) on a
/// fresh connection. A `Content-Length` is added for `body` unless `headers`
/// already set `content-length` or `body` is `None`. `None` when the server
/// closed the connection without an answer.
pub async fn raw(
    sim: &Simulator,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Option<Resp> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", sim.port()))
        .await
        .expect("connect");
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let has_len = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if let (Some(b), false) = (body, has_len) {
        req.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    // The server may close early (a dropped connection); reading tells.
    let _ = s.write_all(&bytes).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Resp {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

/// `raw` that expects an answer.
pub async fn http(
    sim: &Simulator,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    raw(sim, method, target, headers, body)
        .await
        .unwrap_or_else(|| panic!("no answer to {method} {target}"))
}
