//! Bridges between async streams and blocking readers and writers, over bounded
//! channels so memory stays at a few chunks whatever the volume size.

use std::io::{self, Read, Write};

use bytes::Bytes;
use futures::StreamExt;
use jetbridge_core::ports::ByteStream;
use jetbridge_core::{Error, Result};
use tokio::sync::mpsc;

use sha2::{Digest as _, Sha256};

use crate::tree::FailSlot;

/// Chunks in flight between the async side and a blocking thread.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// Bytes gathered before a chunk is handed on.
pub(crate) const OUT_CHUNK: usize = 1 << 20;

/// One message from the async side to a blocking reader.
#[derive(Debug)]
pub(crate) enum Chunk {
    Data(Bytes),
    /// The input failed; its error is what the caller sees.
    Failed(Error),
    /// The input ended normally.
    End,
}

/// A blocking [`Read`] over chunks sent from the async side.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
    done: bool,
    failed: FailSlot,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Chunk>, failed: FailSlot) -> Self {
        ChannelReader {
            rx,
            cur: Bytes::new(),
            done: false,
            failed,
        }
    }

    fn fail(&self, e: Error) -> io::Error {
        let msg = e.to_string();
        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        io::Error::other(msg)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Chunk::Data(b)) => self.cur = b,
                Some(Chunk::End) => self.done = true,
                Some(Chunk::Failed(e)) => return Err(self.fail(e)),
                // The sender went away without saying the stream ended: the caller
                // gave up. Never treat that as a complete input.
                None => {
                    return Err(self.fail(Error::lost("the stream was abandoned before it ended")));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Feed `input` into `tx` until it ends, fails, or the receiver goes away.
pub(crate) async fn forward(mut input: ByteStream, tx: mpsc::Sender<Chunk>) {
    while let Some(item) = input.next().await {
        let (chunk, last) = match item {
            Ok(b) if b.is_empty() => continue,
            Ok(b) => (Chunk::Data(b), false),
            Err(e) => (Chunk::Failed(e), true),
        };
        if tx.send(chunk).await.is_err() || last {
            return;
        }
    }
    let _ = tx.send(Chunk::End).await;
}

/// A blocking [`Write`] that sends full chunks over a bounded channel (blocking when
/// the receiver is behind) and fails with `BrokenPipe` once the receiver is gone.
pub(crate) struct ChannelWriter<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
    buf: Vec<u8>,
    chunk: usize,
    total: u64,
    hasher: Option<Sha256>,
}

impl<T> ChannelWriter<T> {
    pub(crate) fn new(tx: mpsc::Sender<T>, wrap: fn(Bytes) -> T, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            wrap,
            buf: Vec::with_capacity(chunk),
            chunk,
            total: 0,
            hasher: None,
        }
    }

    /// Also compute the sha256 of everything written.
    pub(crate) fn hashed(mut self) -> Self {
        self.hasher = Some(Sha256::new());
        self
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
        self.tx
            .blocking_send((self.wrap)(Bytes::from(chunk)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }

    /// Send what is buffered; the total number of bytes written and their sha256
    /// (all zero unless [`Self::hashed`]).
    pub(crate) fn finish(mut self) -> io::Result<(u64, [u8; 32])> {
        self.send()?;
        let hash = self.hasher.take().map(|h| h.finalize().into());
        Ok((self.total, hash.unwrap_or([0; 32])))
    }
}

impl<T> Write for ChannelWriter<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if let Some(h) = &mut self.hasher {
            h.update(&data[..n]);
        }
        self.total += n as u64;
        if self.buf.len() >= self.chunk {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Chunks go out when full or at `finish`; a flush from a wrapped encoder must
        // not produce many tiny parts.
        Ok(())
    }
}

/// A [`ByteStream`] over a receiver of results.
pub(crate) fn receiver_stream(rx: mpsc::Receiver<Result<Bytes>>) -> ByteStream {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
