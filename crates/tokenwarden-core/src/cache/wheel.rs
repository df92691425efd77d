//! One driver for all the keys of a keyed cache: a queue of when each key's cache wants its
//! next tick, served by one task, instead of a sleeping task per key.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::padded::Padded;

/// What the wheel drives: a key's cache, ticked when it comes due. The wheel knows nothing else
/// of the cache.
pub(crate) trait Driven: Send + Sync {
    /// Whether request `seq` is still the cache's latest (older ones are ignored).
    fn wants_tick(&self, seq: u64) -> bool;
    /// The cache's time came (request `seq`): it refreshes, retires or asks again.
    fn tick_due(self: Arc<Self>, wheel: &Arc<Wheel>, seq: u64);
    /// The wheel's task ended (its runtime is gone): the cache drives itself again.
    fn driver_gone(&self);
}

/// A key's cache asks to be ticked at `at`; `seq` tells its latest request from older ones.
struct Due {
    at: Instant,
    seq: u64,
    inner: Weak<dyn Driven>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<Due>>,
    /// The task serving the queue, and its number (a task that ended does not clear a newer
    /// one's place).
    task: Option<(u64, AbortHandle)>,
    tasks: u64,
    /// The queue's length after it was last tidied: it is tidied again at twice that.
    tidied: usize,
}

impl Queue {
    /// Empties the queue.
    fn forget(&mut self) -> Vec<Due> {
        self.heap.drain().map(|Reverse(d)| d).collect()
    }

    /// Drops the entries nobody wants any more (a cache gone, or asking again since), once the
    /// queue has doubled since the last time: each key keeps about one entry.
    fn tidy_if_due(&mut self) {
        if self.heap.len() < 2 * self.tidied + 64 {
            return;
        }
        self.heap.retain(|Reverse(d)| {
            d.inner
                .upgrade()
                .is_some_and(|inner| inner.wants_tick(d.seq))
        });
        self.tidied = self.heap.len();
    }
}

/// The shared driver of a keyed cache's keys.
#[derive(Default)]
pub(crate) struct Wheel {
    queue: Mutex<Queue>,
    notify: Notify,
    seq: AtomicU64,
    /// Bumped after any key's state word changes (its own cache line: read by every cached
    /// get, written only when a key's token or its usability changes). A thread's copy of a
    /// key checked since the last bump is served without reading the key's cache.
    changes: Padded<AtomicU64>,
}

impl Wheel {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells the keys' copies that some key's state word changed (after it did).
    pub(crate) fn changed(&self) {
        self.changes.0.fetch_add(1, Release);
    }

    /// The number of changes so far; read before a key's state word, so that a copy checked
    /// against that word is marked with a number no later than the change it saw.
    #[inline]
    pub(crate) fn changes(&self) -> u64 {
        self.changes.0.load(Acquire)
    }

    /// A new request number.
    pub(crate) fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Relaxed) + 1
    }

    /// Asks for `inner` to be ticked at `at` (request `seq`, its latest), and makes sure a task
    /// serves the queue (on the current runtime, if none does). Returns the task's abort
    /// handle — the keyed cache's, never to be aborted by a key — or `None` if no task serves
    /// the queue (no runtime here).
    pub(crate) fn schedule(
        self: &Arc<Self>,
        inner: Weak<dyn Driven>,
        at: Instant,
        seq: u64,
    ) -> Option<AbortHandle> {
        let mut queue = self.lock();
        queue.tidy_if_due();
        let earliest = queue.heap.peek().is_none_or(|Reverse(d)| at < d.at);
        queue.heap.push(Reverse(Due { at, seq, inner }));
        let running = queue
            .task
            .as_ref()
            .filter(|(_, handle)| !handle.is_finished())
            .map(|(_, handle)| handle.clone());
        let handle = match running {
            Some(handle) => {
                drop(queue);
                if earliest {
                    self.notify.notify_one();
                }
                handle
            }
            None => {
                let runtime = Handle::try_current().ok()?;
                queue.tasks += 1;
                let number = queue.tasks;
                let handle = runtime
                    .spawn(serve(Arc::downgrade(self), number))
                    .abort_handle();
                queue.task = Some((number, handle.clone()));
                handle
            }
        };
        Some(handle)
    }

    /// Requests queued (current and stale).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().heap.len()
    }

    /// Stops the task and forgets the queue: the keyed cache is gone. Caches still held
    /// (through handles) are not ticked any more.
    pub(crate) fn stop(&self) {
        let due = {
            let mut queue = self.lock();
            if let Some((_, task)) = queue.task.take() {
                task.abort();
            }
            queue.forget()
        };
        undriven(due);
    }
}

/// Tells the caches of `due` that nobody ticks them: their hot path stops serving until their
/// next use gives them a driver again. Called with no lock held.
fn undriven(due: Vec<Due>) {
    for d in due {
        if let Some(inner) = d.inner.upgrade() {
            inner.driver_gone();
        }
    }
}

/// Clears the keys' driver when the task ends abnormally (its runtime shut down, or it was
/// aborted): the keys it was to tick stop serving from their hot path, and are given a driver
/// again on their next use.
struct Ending {
    wheel: Weak<Wheel>,
    number: u64,
}

impl Drop for Ending {
    fn drop(&mut self) {
        let Some(wheel) = self.wheel.upgrade() else {
            return;
        };
        let due = {
            let mut queue = wheel.lock();
            if queue.task.as_ref().is_none_or(|(n, _)| *n != self.number) {
                // It ended normally (the queue was empty), or a newer task serves it.
                return;
            }
            queue.task = None;
            queue.forget()
        };
        undriven(due);
    }
}

async fn serve(wheel: Weak<Wheel>, number: u64) {
    let _ending = Ending {
        wheel: wheel.clone(),
        number,
    };
    loop {
        let Some(this) = wheel.upgrade() else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        let next = {
            let mut queue = this.lock();
            while queue.heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
                if let Some(Reverse(d)) = queue.heap.pop() {
                    due.push(d);
                }
            }
            let next = queue.heap.peek().map(|Reverse(d)| d.at);
            if next.is_none() && due.is_empty() {
                // Nothing to tick: end; the next request starts a task again.
                if queue.task.as_ref().is_some_and(|(n, _)| *n == number) {
                    queue.task = None;
                }
                return;
            }
            next
        };
        for d in due {
            if let Some(inner) = d.inner.upgrade() {
                inner.tick_due(&this, d.seq);
            }
        }
        // Woken early when a key asks for a tick sooner than the earliest in the queue.
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, this.notify.notified()).await;
            }
            None => {
                // Ticks may have queued more: look again at once.
                tokio::task::yield_now().await;
            }
        }
    }
}
