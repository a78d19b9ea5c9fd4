//! Variables are often secrets, and a shared queue is a database: they are stored
//! sealed (AES-256-GCM, a fresh random nonce per build) with a key every replica
//! holds, never in clear.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

/// The key that seals variables. Its `Debug` shows nothing of it.
pub struct VarsKey(LessSafeKey);

impl std::fmt::Debug for VarsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VarsKey(..)")
    }
}

impl VarsKey {
    /// The key of a key file's text (surrounding whitespace ignored): its SHA-256, so
    /// any text of enough entropy serves, e.g. `openssl rand -hex 32`. `None` for text
    /// too short to be a key (under 32 characters).
    pub fn from_text(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() < 32 {
            return None;
        }
        let digest = Sha256::digest(text.as_bytes());
        // A 32-byte key is what AES-256 takes; it cannot be refused.
        UnboundKey::new(&AES_256_GCM, &digest)
            .ok()
            .map(|k| VarsKey(LessSafeKey::new(k)))
    }

    /// `plain` sealed: base64 of nonce, ciphertext and tag.
    pub fn seal(&self, plain: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for a nonce".to_owned())?;
        let mut data = plain.to_vec();
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| "sealing the variables failed".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// What [`Self::seal`] sealed; an error for anything else (another key, tampering).
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, String> {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| "the sealed variables are not base64".to_owned())?;
        if raw.len() < NONCE_LEN {
            return Err("the sealed variables are truncated".into());
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| "the sealed variables are truncated".to_owned())?;
        let mut data = data.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::empty(), &mut data)
            .map_err(|_| {
                "the variables were sealed with another key (every replica needs the same \
                 --vars-key-file)"
                    .to_owned()
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn sealed_vars_open_with_the_same_key_only() {
        let key = VarsKey::from_text(K).unwrap();
        let sealed = key.seal(b"{\"token\":\"s3cr3t\"}").unwrap();
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(key.open(&sealed).unwrap(), b"{\"token\":\"s3cr3t\"}");
        // A fresh nonce each time.
        assert_ne!(sealed, key.seal(b"{\"token\":\"s3cr3t\"}").unwrap());
        let other = VarsKey::from_text(&K.replace('0', "1")).unwrap();
        assert!(other.open(&sealed).unwrap_err().contains("--vars-key-file"));
        assert!(key.open("AAAA").is_err());
    }

    #[test]
    fn short_keys_are_refused_and_debug_shows_nothing() {
        assert!(VarsKey::from_text("short").is_none());
        let key = VarsKey::from_text(K).unwrap();
        assert_eq!(format!("{key:?}"), "VarsKey(..)");
    }
}
