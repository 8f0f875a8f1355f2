//! The guest in service, swapped whole: a new component is prepared and checked off the hot path,
//! then replaces the old one in one atomic store. The pipeline picks it up at its next batch
//! boundary, so a batch never mixes versions.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::LoadedGuest;

/// Accepted versions kept for rollback, besides the current one.
const KEPT_VERSIONS: usize = 4;

pub struct GuestSlot {
    current: ArcSwap<LoadedGuest>,
    /// Earlier accepted versions, oldest first.
    previous: Mutex<Vec<Arc<LoadedGuest>>>,
}

impl GuestSlot {
    pub fn new(guest: LoadedGuest) -> Self {
        Self {
            current: ArcSwap::from_pointee(guest),
            previous: Mutex::new(Vec::new()),
        }
    }

    pub fn current(&self) -> Arc<LoadedGuest> {
        self.current.load_full()
    }

    /// Puts `guest` in service; returns the one it replaces, which is kept for rollback.
    pub fn swap(&self, guest: LoadedGuest) -> Arc<LoadedGuest> {
        let old = self.current.swap(Arc::new(guest));
        let mut previous = self.previous.lock().expect("slot lock");
        previous.push(old.clone());
        if previous.len() > KEPT_VERSIONS {
            previous.remove(0);
        }
        old
    }

    /// Puts the previous accepted version back in service; returns (replaced, restored), or
    /// `None` when there is no earlier version.
    pub fn rollback(&self) -> Option<(Arc<LoadedGuest>, Arc<LoadedGuest>)> {
        let mut previous = self.previous.lock().expect("slot lock");
        let restored = previous.pop()?;
        let replaced = self.current.swap(restored.clone());
        Some((replaced, restored))
    }
}
