//! What a factory hands a suite: the port under test plus whatever must live as long as
//! the case does (a temporary directory, a schema that drops itself, a server).

use std::any::Any;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use jetbridge_core::ports::{Exec, Pods};

type Guard = Box<dyn Any + Send + Sync>;

/// One port under test, with guards dropped after it (after the case).
pub struct Subject<P: ?Sized> {
    // Field order matters: the port is dropped before the guards it may depend on.
    port: Arc<P>,
    guards: Vec<Guard>,
}

impl<P: ?Sized> Subject<P> {
    /// A subject for `port`.
    pub fn new(port: Arc<P>) -> Self {
        Subject {
            port,
            guards: Vec::new(),
        }
    }

    /// Keep `guard` alive until the subject is dropped (after the port).
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }

    /// The port, shared.
    pub fn port(&self) -> Arc<P> {
        Arc::clone(&self.port)
    }
}

impl<P: ?Sized> Deref for Subject<P> {
    type Target = P;
    fn deref(&self) -> &P {
        &self.port
    }
}

impl<P: ?Sized> fmt::Debug for Subject<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("port", &std::any::type_name::<P>())
            .field("guards", &self.guards.len())
            .finish()
    }
}

/// A pod backend under test: [`Pods`] and the [`Exec`] that runs commands in its pods.
pub struct BackendSubject {
    /// Where test pods are created.
    pub pods: Arc<dyn Pods>,
    /// How commands run in them.
    pub exec: Arc<dyn Exec>,
    /// The image of test pods; it must have a POSIX `sh`, `cat`, `sleep` and `tar`
    /// (e.g. `busybox:1.36`). Ignored by backends without image support.
    pub image: String,
    guards: Vec<Guard>,
}

impl BackendSubject {
    /// A backend subject.
    pub fn new(pods: Arc<dyn Pods>, exec: Arc<dyn Exec>, image: impl Into<String>) -> Self {
        BackendSubject {
            pods,
            exec,
            image: image.into(),
            guards: Vec::new(),
        }
    }

    /// Keep `guard` alive until the subject is dropped (after the ports).
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }
}

impl fmt::Debug for BackendSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendSubject")
            .field("pods", &self.pods.capabilities())
            .field("exec", &self.exec.capabilities())
            .field("image", &self.image)
            .field("guards", &self.guards.len())
            .finish()
    }
}
