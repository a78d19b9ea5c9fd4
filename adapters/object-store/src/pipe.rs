//! Bridges between async streams and blocking readers and writers, over bounded
//! channels so memory stays at a few chunks whatever the volume size.

use std::io::{self, Write};

use bytes::Bytes;
use jetbridge_core::Result;
use jetbridge_core::ports::ByteStream;
use tokio::sync::mpsc;

/// Chunks in flight between the async side and a blocking thread.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// Bytes gathered before a chunk is handed on.
pub(crate) const OUT_CHUNK: usize = 1 << 20;

pub(crate) use jetbridge_core::ports::bridge::{ChannelReader, Chunk, forward};

/// A blocking [`Write`] that sends full chunks over a bounded channel (blocking when
/// the receiver is behind) and fails with `BrokenPipe` once the receiver is gone.
pub(crate) struct ChannelWriter<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
    buf: Vec<u8>,
    chunk: usize,
    total: u64,
    crc: Option<crc_fast::Digest>,
}

impl<T> ChannelWriter<T> {
    pub(crate) fn new(tx: mpsc::Sender<T>, wrap: fn(Bytes) -> T, chunk: usize) -> Self {
        ChannelWriter {
            tx,
            wrap,
            buf: Vec::with_capacity(chunk),
            chunk,
            total: 0,
            crc: None,
        }
    }

    /// Also compute the CRC32C of everything written (see [`crate::checksum`]).
    pub(crate) fn checksummed(mut self) -> Self {
        self.crc = Some(crate::checksum::crc32c());
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

    /// Send what is buffered; the total number of bytes written and their CRC32C
    /// (0 unless [`Self::checksummed`]).
    pub(crate) fn finish(mut self) -> io::Result<(u64, u32)> {
        self.send()?;
        let crc = self.crc.take().map_or(0, |c| crate::checksum::value(&c));
        Ok((self.total, crc))
    }
}

impl<T> Write for ChannelWriter<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if let Some(c) = &mut self.crc {
            c.update(&data[..n]);
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
