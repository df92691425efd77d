//! The key map: a key's slot, how the map is laid out in shards, and quick_cache's hooks
//! that keep pinned keys and drop evicted keys' tokens outside the map's lock.

use super::*;

/// A key's cache, as the keyed cache holds it.
pub(crate) struct Slot {
    pub(super) cache: TokenCache,
    /// Registered ahead with no factory to make it again: never evicted.
    pub(super) kept: bool,
    /// Seconds since the keyed cache was made, at the last look-up of the key.
    pub(super) used_at: AtomicU64,
}

impl Slot {
    pub(super) fn label(&self) -> &KeyLabel {
        &self.cache.inner().key_label
    }

    pub(super) fn pinned(self: &Arc<Self>) -> bool {
        // The map holds one reference; any other is a handle in use (a request in flight).
        self.kept || Arc::strong_count(self) > 1 || self.cache.inner().is_busy()
    }
}

/// How the key map is laid out for `capacity` keys: its shard count and the total room of its
/// shards. Each shard evicts on its own once it holds its share of the room, and keys do not
/// hash evenly into shards: with shards given exactly `capacity / shards`, a map of 200
/// merchants and capacity 200 (4 shards of 50) evicted merchants it had room for. So a shard
/// is made to hold at least 1,024 keys (a map of fewer than 2,048 is one shard: exact), and
/// each shard gets its share plus five standard deviations of the binomial spread of
/// `capacity` keys over the shards: a shard overflows before the map holds `capacity` keys
/// with odds under one in a million, and the map holds at most 16% more than `capacity`
/// (10,000 keys in 8 shards: 11,336). One hot key's requests meet one shard's lock however
/// many there are, so fewer shards cost a small map little.
pub(super) fn map_layout(capacity: usize) -> (usize, u64) {
    const MIN_SHARD: usize = 1_024;
    let parallelism = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let mut shards = (parallelism * 4).next_power_of_two();
    while shards > 1 && capacity / shards < MIN_SHARD {
        shards /= 2;
    }
    if shards == 1 {
        return (1, capacity as u64);
    }
    #[allow(clippy::cast_precision_loss)] // capacities are far below 2^52
    let (n, s) = (capacity as f64, shards as f64);
    let share = n / s;
    let spread = (n * (1.0 / s) * (1.0 - 1.0 / s)).sqrt();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive, small
    let per_shard = (share + 5.0 * spread).ceil() as u64 + 1;
    (shards, per_shard * shards as u64)
}

/// quick_cache's hooks: pinned keys are never evicted; evicted keys drop their tokens once the
/// map's lock is released.
#[derive(Clone)]
pub(super) struct Pins;

/// The keys a map operation evicted: their tokens are dropped when this goes.
pub(super) struct Evicted(Vec<Arc<Slot>>);

impl Drop for Evicted {
    fn drop(&mut self) {
        for slot in self.0.drain(..) {
            tracing::debug!(key = %slot.label(), "key evicted");
            // Forgotten here only: other replicas keep the key's shared token.
            slot.cache.inner().revoke();
        }
    }
}

impl<K> Lifecycle<K, Arc<Slot>> for Pins {
    type RequestState = Evicted;

    fn is_pinned(&self, _key: &K, slot: &Arc<Slot>) -> bool {
        slot.pinned()
    }

    fn begin_request(&self) -> Evicted {
        Evicted(Vec::new())
    }

    fn on_evict(&self, state: &mut Evicted, _key: K, slot: Arc<Slot>) {
        state.0.push(slot);
    }
}
