//! In-memory fakes of all four ports, with fault injection.
