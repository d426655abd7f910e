//! The tracks published in the room that this worker knows: its own publishers' and those of
//! other workers and nodes it forwards.
//!
//! [`Publications`] maps each track to what its subscribers and signaling need to know about it
//! (owner, kind, codec, layers, mute state, origin). A track appears once, whatever the number
//! of its subscribers; its origin says whether this worker receives it from a publisher peer
//! connection or from the cluster.

use crate::signaling::protocol::{TrackSourceName, TrackView};
use sfu_core::{MediaKind, TrackId};
use std::collections::HashMap;

/// See the module documentation.
#[derive(Default)]
pub(super) struct Publications {
    tracks: HashMap<TrackId, Published>,
}

impl Publications {
    pub fn get(&self, id: &TrackId) -> Option<&Published> {
        self.tracks.get(id)
    }

    pub fn get_mut(&mut self, id: &TrackId) -> Option<&mut Published> {
        self.tracks.get_mut(id)
    }

    pub fn contains(&self, id: &TrackId) -> bool {
        self.tracks.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Published> {
        self.tracks.values()
    }

    pub fn insert(&mut self, published: Published) {
        self.tracks.insert(published.id, published);
    }

    pub fn remove(&mut self, id: &TrackId) -> Option<Published> {
        self.tracks.remove(id)
    }

    /// Tracks published on this worker (those of other workers or nodes are counted where they
    /// are published).
    pub fn local_count(&self) -> usize {
        self.tracks
            .values()
            .filter(|t| matches!(t.origin, Origin::Local { .. }))
            .count()
    }

    /// What clients are told of these tracks (those still published, in this order).
    pub fn views<'a>(&self, ids: impl IntoIterator<Item = &'a TrackId>) -> Vec<TrackView> {
        ids.into_iter()
            .filter_map(|t| self.tracks.get(t).map(Published::view))
            .collect()
    }
}

impl std::ops::Index<&TrackId> for Publications {
    type Output = Published;
    fn index(&self, id: &TrackId) -> &Published {
        &self.tracks[id]
    }
}

/// Where a track comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::media) enum Origin {
    /// Published on this node, on this peer connection.
    Local { peer: usize },
    /// Published on another node; relayed here while someone here wants it.
    Remote { node: String },
}

/// A track published in this room, here or on another node.
pub(super) struct Published {
    pub id: TrackId,
    pub owner: String,
    pub kind: MediaKind,
    pub rtc_codec: rtc::rtp_transceiver::rtp_sender::RTCRtpCodec,
    pub name: String,
    pub rids: Vec<String>,
    pub origin: Origin,
    pub muted: bool,
    pub source: TrackSourceName,
    /// Audio whose levels are known (speaker ranking).
    pub audio_levels: bool,
    /// Payload type of RED in its packets (as its publisher negotiated it), if it may send RED.
    pub red_payload_type: Option<u8>,
}

impl Published {
    pub fn view(&self) -> TrackView {
        TrackView {
            sid: self.id.to_string(),
            participant: self.owner.clone(),
            kind: match self.kind {
                MediaKind::Audio => "audio",
                MediaKind::Video => "video",
            },
            codec: self.rtc_codec.mime_type.clone(),
            layers: self.rids.clone(),
            name: self.name.clone(),
            muted: self.muted,
            source: self.source.as_str(),
        }
    }
}
