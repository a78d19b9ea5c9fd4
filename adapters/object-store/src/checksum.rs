//! The checksum of a stored data object: CRC32C, the checksum GCS itself keeps.
//!
//! Its job is to catch damage to the object (a flipped bit, a truncated or swapped
//! object) before anything is parsed, including bytes the tree digest does not cover
//! (tar header fields such as mtime, padding, the zstd framing). The content's
//! identity is the tree digest (sha256 of every file), recorded in the manifest and
//! verified on every read; a second cryptographic hash of the same bytes would cost a
//! full sha256 pass per write and per read for no further guarantee, since anyone who
//! can rewrite the object can rewrite the manifest beside it.

/// A running CRC32C (Castagnoli, as in iSCSI and GCS).
pub(crate) fn crc32c() -> crc_fast::Digest {
    crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi)
}

/// The 32-bit value of a running CRC32C.
pub(crate) fn value(d: &crc_fast::Digest) -> u32 {
    // A 32-bit CRC is returned widened to u64; the high half is always zero.
    (d.finalize() & 0xffff_ffff) as u32
}

/// How a manifest writes a CRC32C: 8 lowercase hex digits.
pub(crate) fn to_hex(crc: u32) -> String {
    format!("{crc:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, appendix B.4).
        let mut d = crc32c();
        d.update(b"1234");
        d.update(b"56789");
        assert_eq!(value(&d), 0xe306_9283);
        assert_eq!(to_hex(value(&d)), "e3069283");
        assert_eq!(to_hex(value(&crc32c())), "00000000");
    }
}
