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
use kube::client::Connection;
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

/// Open the exec WebSocket for `argv` in `pod`.
pub(crate) async fn connect(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    argv: &[String],
    params: &AttachParams,
) -> kube::Result<Connection> {
    let url = Pod::url_path(&(), Some(namespace));
    let mut req = kube::core::Request::new(url)
        .exec(pod, argv.iter().cloned(), params)
        .map_err(kube::Error::BuildRequest)?;
    req.extensions_mut().insert("exec");
    client.connect(req).await
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
