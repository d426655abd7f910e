//! What this worker last asked of the cluster for each track published elsewhere.
//!
//! A worker pulls a remote track only while a local subscriber, a recording or a node it feeds
//! wants it, and only the layers they need (see [`LocalRoom::refresh_demand`]). [`Demand`]
//! remembers what was last asked, so that a new demand is sent only when it changes, and when
//! it is next due by itself: what the allocator wants drifts with bandwidth estimates while
//! nothing else happens.
//!
//! [`LocalRoom::refresh_demand`]: super::LocalRoom::refresh_demand

use sfu_core::{LayerIndex, TrackId};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How often the demand for remote tracks is refreshed when nothing asked for it.
const PERIOD: Duration = Duration::from_millis(200);

/// See the module documentation.
pub(super) struct Demand {
    /// The layers last asked for each remote track (empty: none).
    asked: HashMap<TrackId, Vec<LayerIndex>>,
    /// When the demand is next refreshed by itself.
    next: Instant,
}

impl Demand {
    pub fn new(now: Instant) -> Self {
        Self {
            asked: HashMap::new(),
            next: now,
        }
    }

    /// Whether the periodic refresh is due.
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// A refresh starts: the next periodic one is a period away.
    pub fn refreshed(&mut self, now: Instant) {
        self.next = now + PERIOD;
    }

    /// Records the layers wanted for a track; true if they differ from those last asked (the
    /// cluster must be told).
    pub fn update(&mut self, track: TrackId, wanted: &[LayerIndex]) -> bool {
        if self.asked.get(&track).map(Vec::as_slice).unwrap_or(&[]) == wanted {
            return false;
        }
        self.asked.insert(track, wanted.to_vec());
        true
    }

    /// The track is gone or comes from elsewhere now: nothing is asked for it.
    pub fn forget(&mut self, track: &TrackId) {
        self.asked.remove(track);
    }

    /// Whether any layer of any remote track is being pulled.
    pub fn any(&self) -> bool {
        self.asked.values().any(|l| !l.is_empty())
    }
}
