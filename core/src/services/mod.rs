//! Services built only on the ports.
