//! A multipart upload that always reports the failure that stopped it and aborts
//! itself, retrying the abort.
//!
//! object_store's `WriteMultipart` consumes itself in `abort`, so an abort that fails
//! cannot be sent again, and its `finish` returns the abort's error in place of the
//! part's when both fail. A GCS `DELETE ?uploadId=` is not marked safe to repeat, so a
//! reset connection (common after a bucket answered a part with 503 before reading its
//! body) fails it at once: the unfinished upload stayed in the bucket and the step named
//! the DELETE, not the refused part. Here the abort is retried and the first error wins.

use std::time::Duration;

use bytes::Bytes;
use object_store::{MultipartUpload, PutPayload, PutPayloadMut, PutResult};
use tokio::task::JoinSet;

/// How many times an abort is sent before the upload is left to the bucket's
/// lifecycle rule, and the wait before the first retry (doubled after each).
const ABORT_ATTEMPTS: u32 = 4;
const ABORT_BACKOFF: Duration = Duration::from_millis(100);

/// Parts of `part_size` bytes uploaded concurrently; aborted on drop unless finished.
#[derive(Debug)]
pub(crate) struct Parts {
    upload: Option<Box<dyn MultipartUpload>>,
    buffer: PutPayloadMut,
    part_size: usize,
    tasks: JoinSet<object_store::Result<()>>,
}

impl Parts {
    pub(crate) fn new(upload: Box<dyn MultipartUpload>, part_size: usize) -> Self {
        Parts {
            upload: Some(upload),
            buffer: PutPayloadMut::new(),
            part_size: part_size.max(1),
            tasks: JoinSet::new(),
        }
    }

    /// Buffer `bytes`, starting the upload of each part that fills.
    pub(crate) fn put(&mut self, mut bytes: Bytes) {
        while !bytes.is_empty() {
            let remaining = self.part_size - self.buffer.content_length();
            if bytes.len() < remaining {
                self.buffer.push(bytes);
                return;
            }
            self.buffer.push(bytes.split_to(remaining));
            let part = std::mem::take(&mut self.buffer);
            self.put_part(part.into());
        }
    }

    fn put_part(&mut self, part: PutPayload) {
        if let Some(upload) = self.upload.as_mut() {
            self.tasks.spawn(upload.put_part(part));
        }
    }

    /// Wait until fewer than `max` parts are in flight (none with 0); the first part
    /// that failed is the error.
    pub(crate) async fn wait_for_capacity(&mut self, max: usize) -> object_store::Result<()> {
        while !self.tasks.is_empty() && self.tasks.len() >= max {
            self.join_one().await?;
        }
        Ok(())
    }

    async fn join_one(&mut self) -> object_store::Result<()> {
        match self.tasks.join_next().await {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(object_store::Error::Generic {
                store: "multipart",
                source: Box::new(e),
            }),
            None => Ok(()),
        }
    }

    /// Send the last part, however short, and wait for every part.
    pub(crate) async fn flush(&mut self) -> object_store::Result<()> {
        if self.buffer.content_length() > 0 {
            let part = std::mem::take(&mut self.buffer);
            self.put_part(part.into());
        }
        self.wait_for_capacity(0).await
    }

    /// Send the last part, wait for every part and complete the upload. On any failure
    /// the upload is aborted and that failure, not the abort's, is returned.
    pub(crate) async fn finish(mut self) -> object_store::Result<PutResult> {
        if let Err(e) = self.flush().await {
            self.abort().await;
            return Err(e);
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(object_store::Error::Generic {
                store: "multipart",
                source: "the upload was already aborted".into(),
            });
        };
        match upload.complete().await {
            Ok(done) => {
                self.upload = None;
                Ok(done)
            }
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Stop the parts in flight and abort the upload, sending the abort again while
    /// it fails (an upload already gone counts as aborted). What cannot be aborted is
    /// left to the bucket's lifecycle rule, and said.
    pub(crate) async fn abort(&mut self) {
        self.tasks.shutdown().await;
        if let Some(upload) = self.upload.take() {
            abort_retrying(upload).await;
        }
    }
}

async fn abort_retrying(mut upload: Box<dyn MultipartUpload>) {
    let mut wait = ABORT_BACKOFF;
    for attempt in 1..=ABORT_ATTEMPTS {
        match upload.abort().await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => return,
            Err(e) if attempt == ABORT_ATTEMPTS => {
                tracing::warn!(error = %e, attempts = attempt, "could not abort a multipart upload; the bucket's lifecycle rule has to");
            }
            Err(e) => {
                tracing::debug!(error = %e, attempt, "aborting a multipart upload failed; sending it again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

impl Drop for Parts {
    fn drop(&mut self) {
        // Dropped unfinished (the step was cut short): abort in the background.
        if let Some(upload) = self.upload.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            self.tasks.abort_all();
            rt.spawn(abort_retrying(upload));
        }
    }
}
