//! Keeping a worker registered, and fencing it when it cannot be.
//!
//! A worker's references protect its builds' artifacts only while its registration is
//! alive on the registry's clock. [`Heartbeat::register`] takes the worker name (refused
//! while another live process holds it); [`Heartbeat::keep_alive`] renews every
//! `interval` and, if no renewal has succeeded by the time the registration may have
//! expired, calls its callback once so the worker stops what it runs instead of
//! carrying on unprotected.
//!
//! "May have expired" is measured on this host's monotonic clock from the start of the
//! last successful renewal: the registry set the expiry `ttl` after it received that
//! request, so the registration is alive at least until `start + ttl`. The callback
//! fires `margin` before that, leaving time to stop; no wall clock is compared.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::ports::{ArtifactRegistry, HeartbeatMode, HeartbeatOpts, Worker};

/// How a worker keeps its registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// The worker name.
    pub worker: String,
    /// This process's identity; random by default.
    pub session: String,
    /// How long each heartbeat keeps the registration alive (default 60 s).
    pub ttl: Duration,
    /// Time between renewals (default `ttl / 3`).
    pub interval: Duration,
    /// Stop this long before the registration may expire (default `ttl / 6`).
    pub margin: Duration,
}

impl HeartbeatConfig {
    /// Defaults for `worker`, with a fresh session.
    pub fn new(worker: impl Into<String>) -> Self {
        Self::with_ttl(worker, Duration::from_secs(60))
    }

    /// Defaults for `worker` with registrations lasting `ttl`.
    pub fn with_ttl(worker: impl Into<String>, ttl: Duration) -> Self {
        HeartbeatConfig {
            worker: worker.into(),
            session: uuid::Uuid::new_v4().simple().to_string(),
            ttl,
            interval: ttl / 3,
            margin: ttl / 6,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.worker.is_empty() || self.session.is_empty() {
            return Err(Error::invalid(
                "heartbeat: the worker name and session must not be empty",
            ));
        }
        // A renewal must be due before the registration is given up, and with time to
        // retry once.
        if self.interval.is_zero() || self.margin + self.interval >= self.ttl {
            return Err(Error::invalid(format!(
                "heartbeat: interval {:?} plus margin {:?} must be less than ttl {:?}",
                self.interval, self.margin, self.ttl
            )));
        }
        Ok(())
    }

    fn opts(&self, mode: HeartbeatMode) -> HeartbeatOpts {
        HeartbeatOpts {
            session: self.session.clone(),
            ttl: self.ttl,
            mode,
        }
    }
}

/// A worker's registration in the registry. Cheap to clone.
#[derive(Clone)]
pub struct Heartbeat {
    registry: Arc<dyn ArtifactRegistry>,
    config: HeartbeatConfig,
    /// When the registering request was sent: the registration lives at least `ttl`
    /// from then.
    registered_at: Instant,
    /// When the last successful registration or renewal was sent (shared by clones).
    renewed_at: Arc<std::sync::Mutex<Instant>>,
}

impl std::fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Heartbeat")
            .field("worker", &self.config.worker)
            .field("ttl", &self.config.ttl)
            .finish()
    }
}

impl Heartbeat {
    /// Take the worker name. `AlreadyExists` while another live process holds it,
    /// `Invalid` for a configuration that cannot work, else the registry's error.
    pub async fn register(
        registry: Arc<dyn ArtifactRegistry>,
        config: HeartbeatConfig,
    ) -> Result<(Heartbeat, Worker)> {
        config.validate()?;
        let registered_at = Instant::now();
        let worker = registry
            .heartbeat(&config.worker, &config.opts(HeartbeatMode::Register))
            .await?;
        Ok((
            Heartbeat {
                registry,
                config,
                registered_at,
                renewed_at: Arc::new(std::sync::Mutex::new(registered_at)),
            },
            worker,
        ))
    }

    /// How long ago the last successful registration or renewal was sent (for the
    /// heartbeat-age metric).
    pub fn age(&self) -> Duration {
        self.renewed_at
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// The configuration in use.
    pub fn config(&self) -> &HeartbeatConfig {
        &self.config
    }

    /// Renew the registration until it is lost, then call `on_lost` once with why
    /// ("lost its registration: ...") and return. Transient failures are retried while
    /// time remains; a refused renewal (the registration lapsed or was taken over) is
    /// lost at once. Runs until then: drop the future to stop renewing.
    pub async fn keep_alive(&self, on_lost: impl FnOnce(String) + Send) {
        let c = &self.config;
        let opts = c.opts(HeartbeatMode::Renew);
        // Retries after a transient failure come sooner than the next renewal would.
        let retry = (c.interval / 4).max(Duration::from_millis(100));
        let mut valid_until = self.registered_at + c.ttl - c.margin;
        let mut next = self.registered_at + c.interval;
        let mut last_error: Option<Error> = None;
        let why = loop {
            tokio::time::sleep_until(next.min(valid_until)).await;
            if Instant::now() >= valid_until {
                break match last_error {
                    Some(e) => format!("no heartbeat succeeded in time (last: {e})"),
                    None => "no heartbeat succeeded in time".to_owned(),
                };
            }
            let started = Instant::now();
            let renewal = self.registry.heartbeat(&c.worker, &opts);
            match tokio::time::timeout_at(valid_until, renewal).await {
                Ok(Ok(_)) => {
                    if let Ok(mut t) = self.renewed_at.lock() {
                        *t = started;
                    }
                    valid_until = started + c.ttl - c.margin;
                    next = started + c.interval;
                    last_error = None;
                }
                Ok(Err(e)) if e.is_retryable() => {
                    tracing::warn!(worker = %c.worker, error = %e, "heartbeat failed; retrying");
                    next = Instant::now() + retry;
                    last_error = Some(e);
                }
                Ok(Err(e)) => break e.to_string(),
                Err(_) => {
                    break "the registry did not answer a heartbeat in time".to_owned();
                }
            }
        };
        let why = format!(
            "lost its registration: worker {} could not renew it before it expires ({why})",
            c.worker
        );
        tracing::error!(worker = %c.worker, "{why}");
        on_lost(why);
    }

    /// End the registration now: its references stop protecting and the name is free.
    pub async fn sign_off(&self) -> Result<()> {
        self.registry
            .sign_off(&self.config.worker, &self.config.session)
            .await
    }
}
