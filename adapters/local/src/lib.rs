//! Pods and Exec as local processes: the embedded default backend.
