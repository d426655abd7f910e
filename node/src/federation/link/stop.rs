//! An administrator of our cluster stops forwarding a peer's track here (and lets it through
//! again). The peer is not told and nothing changes on its side: we only act in our cluster.
//!
//! Stops are kept in the registry (`sfu_control::federation::StoppedTrack`, written by the
//! gateways' admin API or the control plane's `FederationService`), so every gateway applies
//! them, the one that takes over after a failover too. The active gateway reads them from its
//! registry view every sync period: a stopped track's registry record is removed and kept out
//! of what the peer's rosters write, so our rooms unpublish it as if its publisher had: their
//! subscriptions end, the nodes' relay wants are forgotten, and the gateway's own want of it,
//! fed by nobody any more, ends with an empty subscription over the federation link, so the
//! track stops crossing too. A resumed track is written again at once from the peer's last
//! roster.

use super::{FederationLinks, Peer};
use crate::federation::levels;
use sfu_control::federation::{StoppedTrack, stopped_prefix};
use std::collections::HashSet;

impl FederationLinks {
    fn stopped(&self) -> std::sync::MutexGuard<'_, HashSet<(String, String)>> {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether our administrator stopped `track` of a peer in our `room`.
    pub(super) fn is_stopped(&self, room: &str, track: &str) -> bool {
        self.stopped()
            .contains(&(room.to_owned(), track.to_owned()))
    }

    /// Reads the stops from the registry view; where they changed, removes the records of
    /// tracks stopped since and writes again those resumed (from the peers' last rosters).
    pub(super) fn apply_stops(&self) {
        let fresh: HashSet<(String, String)> = self
            .membership
            .view::<StoppedTrack>(&stopped_prefix(self.membership.keys()))
            .into_iter()
            .map(|s| (s.room, s.track))
            .collect();
        {
            let mut current = self.stopped();
            if *current == fresh {
                return;
            }
            for (room, track) in fresh.difference(&current) {
                tracing::info!(%room, %track, "federated track stopped in this cluster");
            }
            for (room, track) in current.difference(&fresh) {
                tracing::info!(%room, %track, "federated track forwarded again in this cluster");
            }
            *current = fresh.clone();
        }
        for p in self.peers().values_mut() {
            self.apply_stops_to(p, &fresh);
        }
    }

    fn apply_stops_to(&self, p: &mut Peer, stopped: &HashSet<(String, String)>) {
        let keys = self.membership.keys();
        for (room, tracks) in &p.tracks {
            // A stopped track's levels are dropped too (uncounted: the peer does not know).
            let heard = levels::speakers(tracks, |t| {
                stopped.contains(&(room.clone(), t.track.clone()))
            });
            p.heard.insert(room.clone(), heard);
            let written = p.written.entry(room.clone()).or_default();
            for t in tracks {
                let key = keys.track(room, &t.track);
                let stop = stopped.contains(&(room.clone(), t.track.clone()));
                let has = written.contains(&key);
                if stop && has {
                    written.retain(|k| *k != key);
                    self.membership.remove(key);
                } else if !stop && !has {
                    self.membership.set_json(key.clone(), t);
                    written.push(key);
                }
            }
        }
    }
}
