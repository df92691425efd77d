//! [`KeyLabel`]: how a cache's key is shown in logs, spans and summaries.

use std::fmt;
use std::sync::Arc;

/// A key's display-safe label, as logs, spans and summaries show it. A fingerprint is kept as
/// its number (no allocation per key) and written out when shown.
#[derive(Clone, Default)]
pub(crate) enum KeyLabel {
    /// Not a keyed cache's entry: shown as `-`.
    #[default]
    Unkeyed,
    Fingerprint(u32),
    Named(Arc<String>),
}

impl fmt::Display for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unkeyed => f.write_str("-"),
            Self::Fingerprint(hash) => write!(f, "key-{hash:08x}"),
            Self::Named(label) => f.write_str(label),
        }
    }
}

impl fmt::Debug for KeyLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}
