//! A budget of issuer calls shared by many caches.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// At most `n` calls per second to one issuer, shared by every cache given the budget (the
/// keys of a [`KeyedCache`](crate::KeyedCache), or caches of one gateway), granted **most
/// urgent first**: the fetch whose token reaches its mandatory point soonest (callers waiting
/// with no token: now) goes before refreshes that can wait.
///
/// Calls are spaced evenly, `1/n` s apart (no burst); an issuer's `Retry-After` (on a `429` or
/// `503`) holds every call of the budget, not only the cache that got it; a fetch waits its
/// turn at most [`with_max_wait`](Self::with_max_wait) on top of the cache's fetch timeout.
/// What that guarantees, and a measurement:
/// [docs/keyed.md](https://github.com/tokenwarden/tokenwarden/blob/main/docs/keyed.md)
/// ("Refresh budget").
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::{FetchError, KeyedCache, RefreshBudget, Token, TokenCache};
///
/// let budget = RefreshBudget::per_second(50);
/// let merchants = KeyedCache::<u64>::builder()
///     .with_refresh_budget(budget.clone())
///     .with_factory(|merchant| {
///         let merchant = *merchant;
///         Ok(TokenCache::builder(move || async move {
///             Ok::<_, FetchError>(Token::new(format!("t-{merchant}")).with_expires_in(Duration::from_secs(900)))
///         }))
///     })
///     .build();
/// # let _ = merchants;
/// ```
#[derive(Clone)]
pub struct RefreshBudget {
    inner: Arc<Budget>,
}

/// Two budgets are equal when they are the same budget (clones of one).
impl PartialEq for RefreshBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for RefreshBudget {}

struct Budget {
    interval: Duration,
    max_wait: Duration,
    state: Mutex<Queue>,
    turn: Notify,
}

#[derive(Default)]
struct Queue {
    /// No call before this (the last grant plus the interval).
    next_at: Option<Instant>,
    /// An issuer's `Retry-After`: no call before this.
    hold_until: Option<Instant>,
    /// Waiting fetches: the most urgent (earliest) first, then the first come.
    waiting: BinaryHeap<Reverse<(Instant, u64)>>,
    seq: u64,
    granted: u64,
}

impl RefreshBudget {
    /// A budget of `calls` issuer calls per second (at least 1).
    #[must_use]
    pub fn per_second(calls: u32) -> Self {
        Self::every(Duration::from_secs(1) / calls.max(1))
    }

    /// A budget of one call every `interval`.
    #[must_use]
    pub fn every(interval: Duration) -> Self {
        Self {
            inner: Arc::new(Budget {
                interval,
                max_wait: Duration::from_secs(30),
                state: Mutex::default(),
                turn: Notify::new(),
            }),
        }
    }

    /// How long a fetch may wait for its turn (beyond it, callers get a timeout). Default 30 s.
    #[must_use]
    pub fn with_max_wait(self, wait: Duration) -> Self {
        Self {
            inner: Arc::new(Budget {
                interval: self.inner.interval,
                max_wait: wait,
                state: Mutex::default(),
                turn: Notify::new(),
            }),
        }
    }

    /// How long a fetch may wait for its turn.
    #[must_use]
    pub fn max_wait(&self) -> Duration {
        self.inner.max_wait
    }

    /// Fetches waiting for their turn now.
    #[must_use]
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Calls granted so far.
    #[must_use]
    pub fn granted(&self) -> u64 {
        self.lock().granted
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The issuer said to come back `after` from now: no call of this budget before then.
    pub(crate) fn hold(&self, after: Duration) {
        let until = Instant::now() + after;
        let mut queue = self.lock();
        if queue.hold_until.is_none_or(|at| at < until) {
            queue.hold_until = Some(until);
            tracing::debug!(
                hold_ms = after.as_millis() as u64,
                "refresh budget held by the issuer"
            );
        }
    }

    /// Waits for this fetch's turn: when no more urgent fetch waits, and the budget allows a
    /// call. `urgency`: when the fetch's token must be replaced (now, if callers wait).
    pub(crate) async fn acquire(&self, urgency: Instant) {
        let seq = {
            let mut queue = self.lock();
            queue.seq += 1;
            let seq = queue.seq;
            queue.waiting.push(Reverse((urgency, seq)));
            seq
        };
        // Leaves the queue however this future ends (granted, or dropped with its fetch).
        let mut place = Place {
            budget: self,
            seq,
            granted: false,
        };
        loop {
            let turn = self.inner.turn.notified();
            tokio::pin!(turn);
            turn.as_mut().enable();
            let wait = {
                let mut queue = self.lock();
                let first = queue
                    .waiting
                    .peek()
                    .is_some_and(|Reverse((_, s))| *s == seq);
                let now = Instant::now();
                let ready_at = queue.next_at.max(queue.hold_until).unwrap_or(now);
                if first && now >= ready_at {
                    queue.waiting.pop();
                    queue.next_at = Some(now.max(ready_at) + self.inner.interval);
                    queue.granted += 1;
                    place.granted = true;
                    drop(queue);
                    // The next in line looks again.
                    self.inner.turn.notify_waiters();
                    return;
                }
                first.then_some(ready_at)
            };
            match wait {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at, turn.as_mut()).await;
                }
                None => turn.await,
            }
        }
    }
}

/// A fetch's place in the queue.
struct Place<'a> {
    budget: &'a RefreshBudget,
    seq: u64,
    granted: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if !self.granted {
            let seq = self.seq;
            self.budget
                .lock()
                .waiting
                .retain(|Reverse((_, s))| *s != seq);
            self.budget.inner.turn.notify_waiters();
        }
    }
}

impl fmt::Debug for RefreshBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let queue = self.lock();
        f.debug_struct("RefreshBudget")
            .field("interval", &self.inner.interval)
            .field("waiting", &queue.waiting.len())
            .field("granted", &queue.granted)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_most_urgent_fetch_goes_first_and_calls_are_spaced() {
        let budget = RefreshBudget::per_second(1);
        let start = Instant::now();
        let order = Arc::new(Mutex::new(Vec::new()));
        budget.acquire(start).await; // the first call goes at once
        let mut tasks = Vec::new();
        // Queued in this order: a refresh due in 100 s, one due in 10 s, callers waiting now.
        for (name, due) in [("late", 100), ("soon", 10), ("now", 0)] {
            let (budget, order) = (budget.clone(), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                budget.acquire(start + Duration::from_secs(due)).await;
                order.lock().unwrap().push((name, start.elapsed()));
            }));
            tokio::task::yield_now().await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        let names: Vec<&str> = order.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["now", "soon", "late"]);
        let times: Vec<u64> = order.iter().map(|(_, t)| t.as_secs()).collect();
        assert_eq!(times, [1, 2, 3]);
        assert_eq!(budget.granted(), 4);
        assert_eq!(budget.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_given_up_leaves_the_queue() {
        let budget = RefreshBudget::per_second(1);
        budget.acquire(Instant::now()).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(Instant::now()).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(budget.waiting(), 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(budget.waiting(), 0);
    }
}
