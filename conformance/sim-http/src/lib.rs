//! The HTTP plumbing shared by the API simulators (`jetbridge-kube-sim`,
//! `jetbridge-gcs-sim`): a listener that can be taken again at once, an accept
//! loop whose connections can each be killed, the injected-fault actions with
//! the code that applies them, and civil-date arithmetic for timestamps.
//!
//! What differs between the simulators stays with them: routing, the error
//! body they answer with, and which requests a fault matches.

mod date;
mod fault;
mod server;

pub use date::{civil_from_days, days_from_civil};
pub use fault::{FaultAction, FaultReply, apply};
pub use server::{ConnHandle, bind, serve};
