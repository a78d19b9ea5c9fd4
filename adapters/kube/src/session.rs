//! One exec session over WebSocket, spoken here rather than through kube's
//! `AttachedProcess`, because the adapter must know which subprotocol the server chose:
//!
//! - on `v5.channel.k8s.io` the end of stdin is a close signal for that one stream, and
//!   the output and the status still follow;
//! - on `v4.channel.k8s.io` (Kubernetes 1.29 by default, and proxies that offer no v5)
//!   the only way to end stdin is to close the WebSocket, and a real server then ends
//!   the whole session: the output still buffered and the status are lost (wsstream
//!   `Conn.handle`, k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go). kube's
//!   `AttachedProcess` does exactly that when stdin ends. So on v4 stdin is never ended:
//!   the command is told its length instead ([`crate::exec::wrap_argv`]).

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use jetbridge_core::ports::{ByteStream, OutputSink, OutputStream};
use jetbridge_core::{Error, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Resource;
use kube::api::AttachParams;
use tokio_tungstenite::tungstenite::Message;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
/// v5's "this stream has ended": `[CLOSE, channel]`.
const CLOSE: u8 = 255;

/// Pings keep a session with a quiet command alive through idle-timeout proxies.
const PING_EVERY: Duration = Duration::from_secs(30);

/// Chunks of a spooled stdin as it is sent.
const SPOOL_CHUNK: usize = 64 * 1024;

/// The exec WebSocket's buffers. A session is held for the whole of every running
/// step's command, so the size counts per running build: tungstenite's default read
/// buffer alone is 128 KiB, and the frames of an exec session are small.
const WS_BUFFER: usize = 16 * 1024;

/// The exec subprotocols offered, newest first.
const PROTOCOLS: &str = "v5.channel.k8s.io, v4.channel.k8s.io";

/// An open exec session and the subprotocol the server chose.
pub(crate) struct Connection {
    stream: tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
    v5: bool,
}

impl Connection {
    /// v5: stdin can be ended alone.
    pub(crate) fn supports_stream_close(&self) -> bool {
        self.v5
    }

    fn into_stream(
        self,
    ) -> tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>> {
        self.stream
    }
}

/// Open the exec WebSocket for `argv` in `pod`. The upgrade is made here rather than
/// by kube's `Client::connect` so that the stream gets small buffers; its errors are
/// kube's own, so classification is the same.
pub(crate) async fn connect(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    argv: &[String],
    params: &AttachParams,
) -> kube::Result<Connection> {
    use http::header::{
        CONNECTION, HeaderValue, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_VERSION, UPGRADE,
    };
    use http_body_util::BodyExt as _;
    use kube::client::UpgradeConnectionError as Upgrade;
    let url = Pod::url_path(&(), Some(namespace));
    let req = kube::core::Request::new(url)
        .exec(pod, argv.iter().cloned(), params)
        .map_err(kube::Error::BuildRequest)?;
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert("exec");
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let h = &mut parts.headers;
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    h.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(PROTOCOLS));
    h.insert(
        SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).map_err(|e| kube::Error::HttpError(e.into()))?,
    );
    let res = client
        .send(http::Request::from_parts(
            parts,
            kube::client::Body::from(body),
        ))
        .await?;
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        // As kube reports them: the API's `Status`, or one made from the body's text.
        let bytes = res.into_body().collect().await?.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        let st = serde_json::from_str::<kube::core::Status>(&text).unwrap_or_else(|_| {
            kube::core::Status::failure(text.trim(), "Failed to parse error data")
                .with_code(status.as_u16())
        });
        return Err(kube::Error::Api(st.boxed()));
    }
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(kube::Error::UpgradeConnection(Upgrade::ProtocolSwitch(
            status,
        )));
    }
    let headers = res.headers();
    let is = |name: http::header::HeaderName, want: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case(want))
    };
    if !is(UPGRADE, "websocket") {
        return Err(kube::Error::UpgradeConnection(
            Upgrade::MissingUpgradeWebSocketHeader,
        ));
    }
    if !is(CONNECTION, "Upgrade") {
        return Err(kube::Error::UpgradeConnection(
            Upgrade::MissingConnectionUpgradeHeader,
        ));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_none_or(|v| v.as_bytes() != accept.as_bytes())
    {
        return Err(kube::Error::UpgradeConnection(
            Upgrade::SecWebSocketAcceptKeyMismatch,
        ));
    }
    let v5 = match headers.get(SEC_WEBSOCKET_PROTOCOL).map(|v| v.as_bytes()) {
        Some(b"v5.channel.k8s.io") => true,
        Some(b"v4.channel.k8s.io") => false,
        _ => {
            return Err(kube::Error::UpgradeConnection(
                Upgrade::SecWebSocketProtocolMismatch,
            ));
        }
    };
    let upgraded = hyper::upgrade::on(res)
        .await
        .map_err(|e| kube::Error::UpgradeConnection(Upgrade::GetPendingUpgrade(e)))?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(WS_BUFFER);
    let stream = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(config),
    )
    .await;
    Ok(Connection { stream, v5 })
}

/// How the session ends stdin once its stream is exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StdinEnd {
    /// v5: a close signal for stdin alone.
    Signal,
    /// v4, with the command told the length: nothing; the session stays open.
    Bounded,
    /// v4 without a length (the server changed protocols between two requests): the
    /// only way is closing the session, which loses the output and the status.
    CloseSession,
}

/// Run the session: stdin (when given) is sent, output goes to `sink`, and the status
/// frame ends it. `Ok(None)`: the session ended without a status.
pub(crate) async fn run(
    conn: Connection,
    stdin: Option<ByteStream>,
    end: StdinEnd,
    sink: &dyn OutputSink,
) -> Result<Option<Status>> {
    let (mut tx, mut rx) = conn.into_stream().split();
    let read = async {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Binary(b)) if b.len() > 1 => match b[0] {
                    STDOUT => sink.write(OutputStream::Stdout, &b[1..]),
                    STDERR => sink.write(OutputStream::Stderr, &b[1..]),
                    STATUS => {
                        let status: Status = serde_json::from_slice(&b[1..]).map_err(|e| {
                            Error::lost(format!("the exec status frame is not a Status: {e}"))
                        })?;
                        return Ok(Some(status));
                    }
                    // Stdin and resize are ours to send; the server sends neither.
                    _ => {}
                },
                Ok(Message::Close(_)) => return Ok(None),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "exec stream broke");
                    return Ok(None);
                }
            }
        }
        Ok(None)
    };
    // Sending runs beside reading, so a command that writes while we send never waits
    // on us. It ends only when the socket does (Ok) or stdin fails (Err).
    let write = async {
        if let Some(mut input) = stdin {
            while let Some(chunk) = input.next().await {
                let chunk = chunk.map_err(|e| e.context("reading stdin for exec"))?;
                if chunk.is_empty() {
                    continue;
                }
                let mut frame = Vec::with_capacity(chunk.len() + 1);
                frame.push(STDIN);
                frame.extend_from_slice(&chunk);
                if tx.send(Message::binary(frame)).await.is_err() {
                    // The session ended; how it ended is the reader's to say.
                    return Ok(());
                }
            }
            let ended = match end {
                StdinEnd::Signal => tx.send(Message::binary(vec![CLOSE, STDIN])).await,
                StdinEnd::Bounded => Ok(()),
                StdinEnd::CloseSession => tx.close().await,
            };
            if ended.is_err() {
                return Ok(());
            }
        }
        loop {
            tokio::time::sleep(PING_EVERY).await;
            if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                return Ok::<(), Error>(());
            }
        }
    };
    tokio::pin!(read, write);
    let mut writing = true;
    loop {
        tokio::select! {
            r = &mut read => return r,
            w = &mut write, if writing => {
                writing = false;
                // A failing stdin stream aborts the command (the session is dropped)
                // rather than passing it truncated input.
                w?;
            }
        }
    }
}

/// A stdin stream written to an unnamed temporary file, so its length is known before
/// the command starts (for v4, see the module docs).
pub(crate) struct Spooled {
    file: std::fs::File,
    len: u64,
}

impl Spooled {
    /// Read `input` to its end into a temporary file.
    pub(crate) async fn new(mut input: ByteStream) -> Result<Spooled> {
        let mut file = tempfile::tempfile().map_err(crate::error::spool)?;
        let mut len = 0u64;
        while let Some(chunk) = input.next().await {
            let chunk = chunk.map_err(|e| e.context("reading stdin for exec"))?;
            len += chunk.len() as u64;
            file = tokio::task::spawn_blocking(move || file.write_all(&chunk).map(|()| file))
                .await
                .map_err(|e| Error::other(format!("spooling exec stdin: {e}")))?
                .map_err(crate::error::spool)?;
        }
        Ok(Spooled { file, len })
    }

    /// How many bytes it holds.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Its bytes, from the start.
    pub(crate) fn into_stream(self) -> Result<ByteStream> {
        use std::io::Seek;
        let mut file = self.file;
        file.rewind().map_err(crate::error::spool)?;
        let reader = tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            SPOOL_CHUNK,
        );
        Ok(Box::pin(reader.map(|r| r.map_err(crate::error::spool))))
    }
}
