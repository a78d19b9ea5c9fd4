//! Pipelines recorded by builds' `set_pipeline` steps: the sink a build's runner writes
//! through (into the queue, under the build's lease), and how the stored vars are kept.
//!
//! Pipelines are recorded, not yet triggered: the API lists them so a later release can
//! run their jobs.

use std::sync::Arc;

use async_trait::async_trait;
use jetbridge_core::ports::{BuildQueue, Lease, NewPipeline};
use jetbridge_core::services::{PipelineRecorded, PipelineSink, PipelineToSet};
use jetbridge_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::secret::VarsKey;

/// A pipeline's vars as the queue stores them: sealed with the server's vars key, or in
/// clear in a queue that keeps nothing on disk (the same rule as a build's own vars).
/// No vars at all are stored as no bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StoredVars {
    /// Base64 of nonce, ciphertext and tag ([`VarsKey::seal`]).
    Sealed(String),
    /// In clear: only in a queue in memory.
    Plain(serde_json::Map<String, serde_json::Value>),
}

/// Records one build's pipelines in the queue, under its lease.
pub(crate) struct QueuePipelines {
    pub(crate) queue: Arc<dyn BuildQueue>,
    pub(crate) lease: Lease,
    pub(crate) key: Option<Arc<VarsKey>>,
}

impl QueuePipelines {
    /// The vars as stored, or why they cannot be.
    fn store_vars(&self, vars: serde_json::Map<String, serde_json::Value>) -> Result<Vec<u8>> {
        if vars.is_empty() {
            return Ok(Vec::new());
        }
        let stored = match &self.key {
            Some(key) => {
                let plain = serde_json::to_vec(&vars).map_err(|e| Error::other(e.to_string()))?;
                StoredVars::Sealed(key.seal(&plain).map_err(Error::other)?)
            }
            None if self.queue.capabilities().persistent => {
                return Err(Error::invalid(
                    "set_pipeline: this server stores pipelines in a database and has no key \
                     to seal their `vars` (start it with --vars-key-file), so it refuses them, \
                     as they are often secrets",
                ));
            }
            None => StoredVars::Plain(vars),
        };
        serde_json::to_vec(&stored).map_err(|e| Error::other(e.to_string()))
    }
}

#[async_trait]
impl PipelineSink for QueuePipelines {
    async fn set_pipeline(&self, p: PipelineToSet) -> Result<PipelineRecorded> {
        let vars = self.store_vars(p.vars)?;
        let new = NewPipeline::new(p.team, p.name, p.config, p.file)
            .with_instance_vars(&p.instance_vars)
            .with_vars(vars);
        let set = self.queue.set_pipeline(&self.lease, &new).await?;
        Ok(PipelineRecorded {
            version: set.stored.version,
            changed: set.changed,
        })
    }
}

/// The names of a stored pipeline's vars, without their values: sealed vars are opened
/// only to read the names (`None` when they cannot be: no key, or another key).
pub(crate) fn var_names(stored: &[u8], key: Option<&VarsKey>) -> Option<Vec<String>> {
    if stored.is_empty() {
        return Some(Vec::new());
    }
    let map = match serde_json::from_slice::<StoredVars>(stored).ok()? {
        StoredVars::Plain(m) => m,
        StoredVars::Sealed(s) => serde_json::from_slice(&key?.open(&s).ok()?).ok()?,
    };
    Some(map.keys().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetbridge_core::ports::NewBuild;
    use jetbridge_memory_registry::MemoryBuildQueue;
    use serde_json::json;

    fn to_set(vars: serde_json::Value) -> PipelineToSet {
        let serde_json::Value::Object(vars) = vars else {
            panic!("an object");
        };
        let mut p = PipelineToSet::new("main", "p", "jobs: []\n", "ci/p.yml");
        p.vars = vars;
        p
    }

    async fn sink(key: Option<Arc<VarsKey>>) -> (QueuePipelines, Arc<MemoryBuildQueue>) {
        let queue = Arc::new(MemoryBuildQueue::new());
        queue
            .submit(&NewBuild::new("p", "j", b"{}".to_vec()))
            .await
            .expect("submit");
        let c = queue
            .claim("w", std::time::Duration::from_secs(60))
            .await
            .expect("claim")
            .expect("a build");
        (
            QueuePipelines {
                queue: queue.clone(),
                lease: c.lease,
                key,
            },
            queue,
        )
    }

    #[tokio::test]
    async fn sealed_vars_never_reach_the_queue_in_clear() {
        let key = Arc::new(VarsKey::from_text(&"k".repeat(40)).expect("key"));
        let (sink, queue) = sink(Some(key.clone())).await;
        sink.set_pipeline(to_set(json!({"token": "s3cr3t-value"})))
            .await
            .expect("set");
        let stored = queue.pipelines(None, None).await.expect("list");
        let bytes = &stored[0].pipeline.vars;
        assert!(
            !String::from_utf8_lossy(bytes).contains("s3cr3t-value"),
            "the secret is stored in clear"
        );
        assert_eq!(var_names(bytes, Some(&key)), Some(vec!["token".to_owned()]));
        // Another key reads nothing.
        let other = VarsKey::from_text(&"x".repeat(40)).expect("key");
        assert_eq!(var_names(bytes, Some(&other)), None);
        assert_eq!(var_names(bytes, None), None);
    }

    #[tokio::test]
    async fn a_queue_in_memory_keeps_vars_in_clear_and_no_vars_as_nothing() {
        let (sink, queue) = sink(None).await;
        sink.set_pipeline(to_set(json!({"a": 1})))
            .await
            .expect("set");
        let stored = queue.pipelines(None, None).await.expect("list");
        assert_eq!(
            var_names(&stored[0].pipeline.vars, None),
            Some(vec!["a".to_owned()])
        );
        assert_eq!(
            sink.store_vars(serde_json::Map::new()).expect("none"),
            Vec::<u8>::new()
        );
    }
}
