//! Pausing what a participant receives while its client is away: its signaling session is
//! parked for a resume (`node/src/http/ws/resume.rs`), and media sent to a client that may
//! never come back is bandwidth and CPU for nobody. The subscriptions stay (a resume gets
//! media back at once), as does its place in the room; only the forwarding stops, through the
//! same switch as a client's `track_settings` with `enabled: false`, so resuming forwards
//! again from a keyframe, and dynacast stops asking publishers for layers only it watched.

use crate::media::TrackSettings;
use crate::media::room::{LocalRoom, Peer};
use std::time::Instant;

/// What a paused subscription is set to: nothing forwarded.
const PAUSED: TrackSettings = TrackSettings {
    width: None,
    height: None,
    enabled: false,
    pinned: false,
};

/// The settings to apply to outbound section `i` of `peer` as its subscription starts: the
/// client's own, unless the connection is paused.
pub(super) fn settings(peer: &Peer, i: usize) -> Option<TrackSettings> {
    if peer.paused {
        return Some(PAUSED);
    }
    peer.outbound[i].settings
}

impl LocalRoom {
    /// Pauses (`paused`) or resumes forwarding to participant `sid`'s subscriber connection.
    pub(in crate::media) fn pause(&mut self, now: Instant, sid: &str, paused: bool) {
        let Some(key) = self.roster.local.get(sid).and_then(|p| p.subscriber) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if peer.paused == paused {
            return;
        }
        peer.paused = paused;
        tracing::debug!(room = %self.name, participant = %sid, paused, "forwarding to a parked participant");
        let subscriptions: Vec<_> = peer
            .outbound
            .iter()
            .filter_map(|o| Some((o.subscription?, o.source?, o.settings)))
            .collect();
        for (subscription, track, settings) in subscriptions {
            let settings = match paused {
                true => PAUSED,
                false => settings.unwrap_or(TrackSettings {
                    enabled: true,
                    ..PAUSED
                }),
            };
            self.apply_settings(now, subscription, track, settings);
        }
    }
}
