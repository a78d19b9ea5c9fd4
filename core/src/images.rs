//! Image resolution for resource types and tasks.
