//! A bridge from an async [`ByteStream`] to a blocking [`Read`], over a bounded channel
//! so memory stays at a few chunks whatever the stream's size. Stores that parse tar on
//! a blocking thread (the directory and object stores) feed it with [`forward`].

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use super::ByteStream;
use crate::Error;

/// Where the input's own error is kept, so it wins over what a parser makes of the
/// broken read.
pub type FailSlot = Arc<Mutex<Option<Error>>>;

/// One message from the async side to the blocking reader.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes of the input.
    Data(Bytes),
    /// The input failed; its error is what the caller sees.
    Failed(Error),
    /// The input ended normally.
    End,
}

/// A blocking [`Read`] over the chunks [`forward`] sends. A channel closed without
/// [`Chunk::End`] (the caller gave up) is an error, never the end of the input.
#[derive(Debug)]
pub struct ChannelReader {
    rx: mpsc::Receiver<Chunk>,
    cur: Bytes,
    done: bool,
    failed: FailSlot,
}

impl ChannelReader {
    /// A reader over `rx`, keeping input errors in `failed`.
    pub fn new(rx: mpsc::Receiver<Chunk>, failed: FailSlot) -> Self {
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
                // gave up (future dropped). Never treat that as a complete input.
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
pub async fn forward(mut input: ByteStream, tx: mpsc::Sender<Chunk>) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_in_order_and_abandonment_is_an_error() {
        let (tx, rx) = mpsc::channel(2);
        let failed = FailSlot::default();
        let input: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Ok(Bytes::new()),
            Ok(Bytes::from_static(b"cd")),
        ]));
        tokio::spawn(forward(input, tx));
        let f = failed.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut s = Vec::new();
            ChannelReader::new(rx, f).read_to_end(&mut s).map(|_| s)
        });
        assert_eq!(read.await.unwrap().unwrap(), b"abcd");

        let (tx, rx) = mpsc::channel::<Chunk>(1);
        drop(tx);
        let f = failed.clone();
        let r = tokio::task::spawn_blocking(move || ChannelReader::new(rx, f).read(&mut [0; 4]))
            .await
            .unwrap();
        assert!(r.is_err());
        assert_eq!(
            failed.lock().unwrap().as_ref().map(Error::kind),
            Some(crate::ErrorKind::Lost)
        );
    }
}
