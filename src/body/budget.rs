//! The memory that kept request bodies take together ([`ReplayBudget`], `server.replay_memory`).
//! Keeping a body is what makes it replayable after a re-login, but each may be up to
//! `replay_body_limit`, and many requests at once (one HTTP/2 connection alone opens dozens of
//! streams) must not add up to more than the process can hold: a body that does not fit streams
//! instead, as a body over `replay_body_limit` does. Keeping one costs one atomic add and one
//! subtract.
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The bytes kept bodies hold now, and how many they may hold.
#[derive(Debug)]
pub struct ReplayBudget {
    used: AtomicU64,
    limit: AtomicU64,
}

impl ReplayBudget {
    pub fn new(limit: u64) -> Arc<ReplayBudget> {
        Arc::new(ReplayBudget {
            used: AtomicU64::new(0),
            limit: AtomicU64::new(limit),
        })
    }

    /// A reload's new `replay_memory`; bodies kept already stay kept.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The bytes kept bodies hold now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Counts `bytes` in; returns whether everything counted still fits.
    fn add(&self, bytes: u64) -> bool {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        before.saturating_add(bytes) <= self.limit.load(Ordering::Relaxed)
    }

    fn give_back(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Bytes of one body counted in a [`ReplayBudget`], given back when dropped. `B` is how it reaches
/// the budget: a borrow while the request path holds the body, an `Arc` once the bytes go into a
/// streamed body that outlives it.
pub struct Held<B: Deref<Target = ReplayBudget>> {
    budget: B,
    bytes: u64,
}

impl<B: Deref<Target = ReplayBudget>> Held<B> {
    /// Nothing held yet.
    pub fn none(budget: B) -> Self {
        Held { budget, bytes: 0 }
    }

    /// Takes `bytes` if they fit, else takes nothing; returns whether they were taken.
    pub(super) fn reserve(&mut self, bytes: u64) -> bool {
        if self.budget.add(bytes) {
            self.bytes += bytes;
            true
        } else {
            self.budget.give_back(bytes);
            false
        }
    }

    /// Counts `bytes` already read, fitting or not (they are held either way); returns whether the
    /// budget still has room.
    pub(super) fn count(&mut self, bytes: u64) -> bool {
        self.bytes += bytes;
        self.budget.add(bytes)
    }

    /// The same bytes, held through `budget` instead (`self` then holds none).
    pub(super) fn move_to<C: Deref<Target = ReplayBudget>>(mut self, budget: C) -> Held<C> {
        Held {
            budget,
            bytes: std::mem::take(&mut self.bytes),
        }
    }
}

impl<B: Deref<Target = ReplayBudget>> Drop for Held<B> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_do_not_fit_take_nothing_and_what_is_held_comes_back() {
        let budget = ReplayBudget::new(100);
        let mut a = Held::none(&*budget);
        assert!(a.reserve(60));
        let mut b = Held::none(&*budget);
        assert!(!b.reserve(60), "60 more do not fit");
        assert_eq!(budget.used(), 60);
        // Chunks already read are counted whether they fit or not.
        assert!(b.count(30));
        assert!(!b.count(30));
        assert_eq!(budget.used(), 120);
        let b = b.move_to(budget.clone());
        assert_eq!(budget.used(), 120);
        drop((a, b));
        assert_eq!(budget.used(), 0);
    }
}
