//! VolumeStore over a directory: a PVC, a GCS FUSE mount or any local directory.
