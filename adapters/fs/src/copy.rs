//! Private, writable copies of sealed volumes (`copy_to`): core's verified copy, the
//! same one the local backend uses for its input mounts.

use std::path::Path;

use jetbridge_core::copy::{CopyOptions, CopyReport, copy_verified};
use jetbridge_core::digest::Digest;
use jetbridge_core::{Error, Result};

use crate::walk::Summary;

/// Copy the tree at `src` to `dest`, checking it against `expected` on the way; `dest`
/// is untouched on any error (see [`copy_verified`]).
pub(crate) fn copy_tree(src: &Path, dest: &Path, expected: &Digest) -> Result<Summary> {
    let CopyReport {
        digest,
        size,
        files,
    } = copy_verified(src, dest, expected, CopyOptions::new())?;
    Ok(Summary {
        digest,
        size,
        files,
    })
}

/// A sealed tree holding something a tree may not hold has been tampered with.
pub(crate) fn as_corrupt(e: Error) -> Error {
    if e.kind() == jetbridge_core::ErrorKind::Invalid {
        Error::corrupt(format!(
            "sealed volume no longer passes checks: {}",
            e.message()
        ))
    } else {
        e
    }
}
