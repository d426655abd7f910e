//! An administrator of our cluster stops forwarding a peer's track here (and lets it through
//! again). The peer is not told and nothing changes on its side: we only act in our cluster.
//!
//! A stopped track's registry record is removed and kept out of the rosters the peer sends,
//! so our rooms unpublish it as if its publisher had: their subscriptions end, the nodes'
//! relay wants are forgotten, and the gateway's own want of it, fed by nobody any more, ends
//! with an empty subscription over the federation link, so the track stops crossing too.
//! Forwarding it again takes effect with the peer's next roster (sent every 3 s).
//!
//! The set lives in the active gateway's memory: a failover to another gateway forgets it.

use super::FederationLinks;

/// The outcome of [`FederationLinks::stop_track`].
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Stopped now.
    Stopped,
    /// It was stopped already.
    Already,
    /// No linked peer announced such a track in this room.
    Unknown,
}

impl FederationLinks {
    fn stopped(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<(String, String)>> {
        self.stopped.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether our administrator stopped `track` of a peer in our `room`.
    pub(super) fn is_stopped(&self, room: &str, track: &str) -> bool {
        self.stopped()
            .contains(&(room.to_owned(), track.to_owned()))
    }

    /// Stops forwarding a peer's `track` in our `room` (see the module documentation).
    pub fn stop_track(&self, room: &str, track: &str) -> Stop {
        let id = (room.to_owned(), track.to_owned());
        if self.stopped().contains(&id) {
            return Stop::Already;
        }
        let key = self.membership.keys().track(room, track);
        let mut peers = self.peers();
        let Some(written) = peers
            .values_mut()
            .filter_map(|p| p.written.get_mut(room))
            .find(|w| w.contains(&key))
        else {
            return Stop::Unknown;
        };
        written.retain(|k| *k != key);
        self.stopped().insert(id);
        drop(peers);
        self.membership.remove(key);
        tracing::info!(%room, %track, "federated track stopped in this cluster");
        Stop::Stopped
    }

    /// Forwards a stopped track again; false if it was not stopped.
    pub fn forward_track(&self, room: &str, track: &str) -> bool {
        let was = self.stopped().remove(&(room.to_owned(), track.to_owned()));
        if was {
            tracing::info!(%room, %track, "federated track forwarded again in this cluster");
        }
        was
    }

    /// The tracks stopped in our `room`.
    pub fn stopped_tracks(&self, room: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .stopped()
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, t)| t.clone())
            .collect();
        v.sort();
        v
    }
}
