//! The HTTP plumbing shared by the API simulators (`jetbridge-kube-sim`,
//! `jetbridge-gcs-sim`): a listener that can be taken again at once, an accept
//! loop whose connections can each be killed, the injected faults (what they match,
//! what they do, and the code that applies them), the request log and the
//! [`SimControls`] a test drives them with, and civil-date arithmetic for timestamps.
//!
//! What differs between the simulators stays with them: routing, the error
//! body they answer with, and what they record of a request.

mod control;
mod date;
mod fault;
mod server;

pub use control::{Controls, Fault, RequestLine, SimControls};
pub use date::{civil_from_days, days_from_civil};
pub use fault::{FaultAction, FaultReply, THROTTLED_BODY, apply, throttled};
pub use server::{ConnHandle, bind, serve};
