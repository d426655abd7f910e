//! A published track as the room sees it: its layers, their caches and keyframe state, and the
//! subscriptions it feeds.

use crate::codec::{Codec, MediaKind};
use crate::ids::{LayerIndex, SinkId, SubscriptionId, TrackId};
use crate::keyframe::KeyframeRequester;
use crate::retransmit::RetransmissionCache;
use crate::seq::Unwrapper;
use crate::subscription::Subscription;
use std::time::{Duration, Instant};

/// A layer that sent nothing for this long is considered stopped (the publisher paused it, or
/// its bandwidth no longer allows it).
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the caller knows about a track when it is published.
#[derive(Clone, Debug)]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: MediaKind,
    pub codec: Codec,
    pub clock_rate: u32,
    /// Number of layers: 1 for audio and plain video, one per simulcast encoding otherwise,
    /// ordered from lowest to highest quality.
    pub layers: usize,
}

/// The publisher's last RTCP sender report for one layer.
#[derive(Clone, Copy, Debug)]
pub struct PublisherReport {
    pub ntp: u64,
    pub rtp_time: u32,
    pub received_at: Instant,
}

/// One RTP stream of a track (a simulcast encoding, or the only stream).
pub struct Layer {
    pub(crate) unwrapper: Unwrapper,
    pub(crate) cache: RetransmissionCache,
    pub(crate) keyframes: KeyframeRequester,
    pub(crate) last_packet_at: Option<Instant>,
    pub(crate) report: Option<PublisherReport>,
}

impl Layer {
    fn new(cache_size: usize) -> Self {
        Self {
            unwrapper: Unwrapper::default(),
            cache: RetransmissionCache::new(cache_size),
            keyframes: KeyframeRequester::default(),
            last_packet_at: None,
            report: None,
        }
    }

    /// Whether the layer has carried media recently.
    pub fn is_live(&self, now: Instant) -> bool {
        self.last_packet_at
            .is_some_and(|t| now.saturating_duration_since(t) < LAYER_TIMEOUT)
    }
}

/// A relay link fed one layer of a track, packets untouched: the receiving node rewrites for
/// its own subscribers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RelaySink {
    pub id: SubscriptionId,
    pub sink: SinkId,
    pub layer: LayerIndex,
}

/// A track and the subscriptions it feeds.
pub struct Track {
    pub(crate) info: TrackInfo,
    pub(crate) layers: Vec<Layer>,
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) relays: Vec<RelaySink>,
    /// Muted by an administrator (or its publisher): nothing is forwarded.
    pub(crate) muted: bool,
}

impl Track {
    pub(crate) fn new(info: TrackInfo, cache_size: usize) -> Self {
        let layers = (0..info.layers.max(1))
            .map(|_| Layer::new(cache_size))
            .collect();
        Self {
            info,
            layers,
            subscriptions: Vec::new(),
            relays: Vec::new(),
            muted: false,
        }
    }

    pub fn info(&self) -> &TrackInfo {
        &self.info
    }

    /// The best layer to send a subscriber that may receive up to `max_layer`: the highest live
    /// layer not above it, else the lowest live layer above it, else `max_layer` itself (nothing
    /// is live yet: wait for it).
    pub fn select_layer(&self, now: Instant, max_layer: LayerIndex) -> LayerIndex {
        let top = max_layer.min(self.layers.len() - 1);
        (0..=top)
            .rev()
            .find(|&l| self.layers[l].is_live(now))
            .or_else(|| (top + 1..self.layers.len()).find(|&l| self.layers[l].is_live(now)))
            .unwrap_or(top)
    }

    pub fn subscriber_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Relay sinks fed by this track.
    pub fn relay_count(&self) -> usize {
        self.relays.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulcast() -> Track {
        Track::new(
            TrackInfo {
                id: TrackId(1),
                kind: MediaKind::Video,
                codec: Codec::Vp8,
                clock_rate: 90_000,
                layers: 3,
            },
            16,
        )
    }

    #[test]
    fn selects_the_highest_live_layer_up_to_the_limit() {
        let now = Instant::now();
        let mut t = simulcast();
        assert_eq!(
            t.select_layer(now, 2),
            2,
            "nothing live: wait for the wanted layer"
        );
        t.layers[0].last_packet_at = Some(now);
        t.layers[1].last_packet_at = Some(now);
        assert_eq!(t.select_layer(now, 2), 1);
        assert_eq!(t.select_layer(now, 0), 0);
        t.layers[0].last_packet_at = None;
        assert_eq!(
            t.select_layer(now, 0),
            1,
            "fall back upwards when lower layers stopped"
        );
        assert_eq!(t.select_layer(now + LAYER_TIMEOUT, 2), 2, "all stale again");
    }
}
