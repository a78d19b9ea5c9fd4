//! Throw-away schemas for tests and for running the conformance suite against a live
//! server: each run works in its own `jb_test_<random>` schema, dropped afterwards.

use std::fmt;

use jetbridge_core::Result;

use crate::{establish, quote_ident, validate_schema};

/// A schema dropped (`DROP SCHEMA ... CASCADE`) when this value is dropped.
///
/// Dropping blocks the current thread briefly: the drop runs on a separate thread with
/// its own runtime, so it works inside and outside an async runtime.
pub struct ScratchSchema {
    url: String,
    name: String,
}

impl fmt::Debug for ScratchSchema {
    // The URL may carry a password; only the schema name is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScratchSchema")
            .field("name", &self.name)
            .finish()
    }
}

impl ScratchSchema {
    /// A fresh name `<prefix>_<16 random hex digits>` for a schema on the server at
    /// `url`. The schema itself is created by the migrations of the registry using it.
    pub fn new(url: &str, prefix: &str) -> Result<ScratchSchema> {
        let id = jetbridge_core::names::StepHandle::random();
        let name = format!("{prefix}_{}", &id.as_str()[..16]);
        validate_schema(&name)?;
        Ok(ScratchSchema {
            url: url.to_owned(),
            name,
        })
    }

    /// The schema name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drop the schema now.
    pub async fn drop_now(&self) -> Result<()> {
        drop_schema(&self.url, &self.name).await
    }
}

async fn drop_schema(url: &str, name: &str) -> Result<()> {
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(name));
    establish(url, &sql, "drop scratch schema").await?;
    Ok(())
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        let url = std::mem::take(&mut self.url);
        let name = std::mem::take(&mut self.name);
        let joined = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt {
                Ok(rt) => {
                    if let Err(e) = rt.block_on(drop_schema(&url, &name)) {
                        tracing::warn!(schema = name, error = %e, "could not drop scratch schema");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no runtime to drop a scratch schema"),
            }
        })
        .join();
        if joined.is_err() {
            tracing::warn!("dropping a scratch schema panicked");
        }
    }
}
