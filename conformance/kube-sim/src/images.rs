//! What images hold, for the simulator's host processes (filled in below).
