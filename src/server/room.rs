//! Room for probes on a full listener: the admin listener's probes decide whether the kubelet
//! restarts the sidecar, so peers that hold its connections open (a keep-alive client polling every
//! few seconds holds its slot for ever) must not be able to lock the probes out. When such a
//! listener is full, its connection idle for longest is closed to admit the new one: probes are
//! short, and a connection that is idle has nothing to lose but its keep-alive.
//! (docs/design.md#listeners-and-limits)
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::Activity;

/// The open connections of a listener that makes room, to choose one to close.
#[derive(Default)]
pub struct Room {
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next: AtomicU64,
}

/// A connection counted in its listener's [`Room`] until dropped.
pub(super) struct Registered {
    room: Arc<Room>,
    id: u64,
}

impl Room {
    pub(super) fn register(self: &Arc<Self>, activity: Arc<Activity>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, activity);
        Registered {
            room: self.clone(),
            id,
        }
    }

    /// Asks the connection with no request in flight that has been idle for longest to close.
    /// Returns whether there was one.
    pub(super) fn evict_longest_idle(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter(|a| !a.is_busy() && !a.is_evicted())
            .max_by_key(|a| a.idle_for());
        match victim {
            Some(activity) => {
                activity.evict();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.room.lock().remove(&self.id);
    }
}
