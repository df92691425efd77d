//! The key tokens are encrypted with in Redis.

use std::fmt;

/// The key tokens are encrypted with: 32 bytes, the same for every replica. `Debug` does not
/// show it.
#[derive(Clone)]
pub struct EncryptionKey(pub(crate) [u8; 32]);

impl EncryptionKey {
    /// A key from 32 bytes (random ones: from a secrets manager, or `openssl rand -hex 32`).
    #[must_use]
    pub fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key from 64 hexadecimal digits.
    ///
    /// # Errors
    ///
    /// [`BadKey`] if it is not 64 hexadecimal digits (the message does not show it).
    pub fn from_hex(hex: &str) -> Result<Self, BadKey> {
        let hex = hex.trim().as_bytes();
        if hex.len() != 64 {
            return Err(BadKey);
        }
        let digit = |c: u8| (c as char).to_digit(16).ok_or(BadKey);
        let mut bytes = [0u8; 32];
        for (i, pair) in hex.chunks(2).enumerate() {
            bytes[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
        }
        Ok(Self(bytes))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey([redacted])")
    }
}

/// An encryption key that is not 64 hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadKey;

impl fmt::Display for BadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the token store's encryption key must be 64 hexadecimal digits (32 bytes)")
    }
}

impl std::error::Error for BadKey {}
