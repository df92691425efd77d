//! A thread's own copies of the tokens of the keys it used recently.

use super::*;

/// A thread's copies of the tokens of the keys it used recently.
pub(super) struct Table<K> {
    pub(super) entries: HashMap<K, Copy, DefaultHashBuilder>,
}

/// A thread's copy of a key's token, served while the key's cache's state word is `state` and
/// the clock is before `check_at`.
pub(super) struct Copy {
    pub(super) cache: TokenCache,
    pub(super) snapshot: Snapshot,
    pub(super) state: u64,
    pub(super) check_at: u64,
    /// The keyed cache's count of changes (any key's) when `state` was last found current:
    /// while the count stays there, the key's cache is not read at all.
    pub(super) seen: u64,
    /// The key's clock, kept here so that a cached get reads no line of the key's cache.
    pub(super) clock: Clock,
}

impl Copy {
    /// The token, if this copy may still be served: before its check time and with the key's
    /// cache unchanged since it was taken. `changes` is the keyed cache's count of changes,
    /// read before the key's state word.
    #[inline]
    pub(super) fn serve(&mut self, changes: u64) -> Option<Snapshot> {
        if self.clock.ticks() >= self.check_at {
            return None;
        }
        if changes != self.seen {
            if !self.cache.inner().state_is(self.state) {
                return None;
            }
            self.seen = changes;
        }
        Some(self.snapshot.clone())
    }
}
