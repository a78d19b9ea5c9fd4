//! The conformance suites: one per port, plus runtime suites.
