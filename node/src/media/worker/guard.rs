//! A bug in one room must not take down the others on its worker.
//!
//! Each input a worker handles (a datagram, a command, a room's deadline) runs under
//! [`Worker::guarded`]: a panic is caught, and the room the input had reached into
//! (`Worker::touching`, set wherever the worker looks a room up) is closed on this worker: its
//! local participants are told and removed as an administrator's `DeleteRoom` would do it, and
//! if that panics too, or the room is still there after it, the room is evicted outright (its
//! state is no longer trusted). The worker then goes on with its next input; other rooms never
//! notice. A panic outside any room (the worker's own tables) is logged and counted too; the
//! worker continues, since nothing it owns was left half-changed by a room.
//!
//! `catch_unwind` costs nothing while no panic happens, which is why it can sit on the
//! per-datagram path.

use super::WorkerCore;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

impl WorkerCore {
    /// Runs `f` (the handling of one input); a panic in it closes the room it was in.
    pub(in crate::media) fn guarded(&mut self, now: Instant, f: impl FnOnce(&mut Self)) {
        self.touching = None;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(self))) {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            self.metrics.room_panics.inc();
            match self.touching.take() {
                Some(idx) => self.close_panicked(now, idx, &what),
                None => tracing::error!(worker = self.index, "panic outside any room: {what}"),
            }
        }
    }

    fn close_panicked(&mut self, now: Instant, idx: usize, what: &str) {
        let name = self.rooms.get(idx).map(|r| r.name().to_owned());
        tracing::error!(
            worker = self.index,
            room = name.as_deref().unwrap_or("?"),
            "panic while handling the room: {what}; closing it on this worker"
        );
        let closed = catch_unwind(AssertUnwindSafe(|| {
            if let Some(room) = self.rooms.get_mut(idx) {
                room.remove_all(now, "the room failed on this node", &mut self.out);
            }
            self.after_room(now, idx);
        }));
        if closed.is_err() || self.rooms.contains(idx) {
            self.evict_room(idx);
        }
    }

    /// Forgets a room without asking it anything: what routes to it, its registry key.
    fn evict_room(&mut self, idx: usize) {
        self.by_ufrag.retain(|_, r| r.room != idx);
        self.by_addr.retain(|_, r| r.room != idx);
        let Some(room) = self.rooms.try_remove(idx) else {
            return;
        };
        self.room_by_name.remove(room.name());
        self.sinks.forget_room(room.name());
        self.membership
            .remove(self.membership.keys().room_node(room.name(), &self.name()));
        // Its peer connections and sessions go with it: clients see their connections close.
        if catch_unwind(AssertUnwindSafe(move || drop(room))).is_err() {
            tracing::error!(
                worker = self.index,
                "a failed room panicked again as it was dropped"
            );
        }
    }
}
