//! A published track as the room sees it: its layers, their caches and keyframe state, and the
//! subscriptions it feeds.

use crate::codec::{Codec, MediaKind};
use crate::ids::{LayerIndex, SinkId, SubscriptionId, TrackId};
use crate::keyframe::KeyframeRequester;
use crate::rate::RateMeter;
use crate::retransmit::RetransmissionCache;
use crate::seq::Unwrapper;
use crate::subscription::Subscription;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A layer that sent nothing for this long is considered stopped (the publisher paused it, or
/// its bandwidth no longer allows it).
pub const LAYER_TIMEOUT: Duration = Duration::from_millis(1500);
/// How a layer's peak cost decays per second.
const PEAK_DECAY_PER_SEC: f64 = 0.98;

/// What a track shows: it decides the track's priority when bandwidth is short.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrackSource {
    #[default]
    Camera,
    Microphone,
    ScreenShare,
}

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
    /// The publishing participant (speaker ranking and last-N are per participant).
    pub participant: Arc<str>,
    pub source: TrackSource,
    /// Published on this node (not relayed from another).
    pub local: bool,
    /// Id of the RFC 6464 audio level header extension in the publisher's packets, if any.
    pub audio_level_ext: Option<u8>,
    /// The track's audio levels are known (measured here from `audio_level_ext`, or shared by
    /// its origin node): it takes part in speaker ranking and top-K.
    pub audio_levels: bool,
    /// Payload type of RED (RFC 2198) in the publisher's packets, if it may send RED.
    pub red_payload_type: Option<u8>,
}

impl TrackInfo {
    /// A track with defaults for everything but what identifies its media.
    pub fn new(id: TrackId, kind: MediaKind, codec: Codec, clock_rate: u32, layers: usize) -> Self {
        Self {
            id,
            kind,
            codec,
            clock_rate,
            layers,
            participant: Arc::from(""),
            source: if kind == MediaKind::Audio {
                TrackSource::Microphone
            } else {
                TrackSource::Camera
            },
            local: true,
            audio_level_ext: None,
            audio_levels: false,
            red_payload_type: None,
        }
    }
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
    /// What the layer costs a subscriber.
    pub(crate) rate: RateMeter,
    /// The highest cost measured recently, decaying slowly, and when it was last updated.
    /// Encoders ramp a layer up again after it resumes and spike at keyframes, so a layer costs
    /// what it cost at its recent peak, not what a quiet moment (or a paused layer's emptying
    /// meter) suggests.
    pub(crate) peak: Option<(f64, Instant)>,
    /// Picture size, from the last keyframe (VP8 only).
    pub(crate) resolution: Option<(u16, u16)>,
}

impl Layer {
    fn new(cache_size: usize) -> Self {
        Self {
            unwrapper: Unwrapper::default(),
            cache: RetransmissionCache::new(cache_size),
            keyframes: KeyframeRequester::default(),
            last_packet_at: None,
            report: None,
            rate: RateMeter::default(),
            peak: None,
            resolution: None,
        }
    }

    /// A packet of `bytes` (on the wire) arrived.
    pub(crate) fn on_packet(&mut self, now: Instant, bytes: usize) {
        self.last_packet_at = Some(now);
        self.rate.add(now, bytes);
    }

    /// What the layer costs: its recent peak, decaying by half in about half a minute.
    fn cost(&mut self, now: Instant) -> Option<u64> {
        let measured = self.rate.bps(now) as f64;
        // The meter scales up its first moments; trust it after a second.
        let trusted = self.rate.covered(now) >= Duration::from_secs(1) && measured > 0.0;
        let decayed = self.peak.map(|(p, at)| {
            p * PEAK_DECAY_PER_SEC.powf(now.saturating_duration_since(at).as_secs_f64())
        });
        let peak = match (decayed, trusted) {
            (Some(d), true) => Some(d.max(measured)),
            (Some(d), false) => Some(d),
            (None, true) => Some(measured),
            (None, false) => None,
        };
        self.peak = peak.map(|p| (p, now));
        match peak {
            Some(p) => Some(p as u64),
            None => (measured > 0.0).then_some(measured as u64),
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
    /// Layers the publisher was last told to send (dynacast), and since when each has been
    /// unneeded.
    pub(crate) publisher_layers: Vec<bool>,
    pub(crate) unneeded_since: Vec<Option<Instant>>,
}

impl Track {
    pub(crate) fn new(info: TrackInfo, cache_size: usize) -> Self {
        let layers = (0..info.layers.max(1))
            .map(|_| Layer::new(cache_size))
            .collect();
        let n = info.layers.max(1);
        Self {
            info,
            layers,
            subscriptions: Vec::new(),
            relays: Vec::new(),
            muted: false,
            publisher_layers: vec![true; n],
            unneeded_since: vec![None; n],
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

    /// Bits per second of each layer, lowest first. A layer never seen flowing here is assumed
    /// to cost what simulcast encoders typically give it: three times the layer below.
    pub fn layer_bitrates(&mut self, now: Instant) -> Vec<u64> {
        let measured: Vec<u64> = self
            .layers
            .iter_mut()
            .map(|l| l.cost(now).unwrap_or(0))
            .collect();
        let default_audio = 40_000;
        let default_video = [150_000u64, 500_000, 1_500_000, 3_000_000];
        let known = measured.iter().position(|&b| b > 0);
        (0..measured.len())
            .map(|i| {
                if measured[i] > 0 {
                    return measured[i];
                }
                match (known, self.info.kind) {
                    (Some(k), _) => {
                        let scale = 3f64.powi(i as i32 - k as i32);
                        ((measured[k] as f64) * scale) as u64
                    }
                    (None, MediaKind::Audio) => default_audio,
                    (None, MediaKind::Video) => {
                        // Align the defaults to the top: a single-layer track is a full one.
                        let offset = default_video.len().saturating_sub(measured.len() + 1);
                        default_video[(i + offset).min(default_video.len() - 1)]
                    }
                }
            })
            .collect()
    }

    /// The lowest layer at least as high as `height` pixels (with 10% tolerance), or the top
    /// layer. Layers whose size is unknown are taken to halve in each dimension per step down
    /// from the top, which is how browsers configure simulcast.
    pub fn layer_for_height(&self, height: u32) -> LayerIndex {
        let n = self.layers.len();
        let top_height = self
            .layers
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, l)| l.resolution.map(|(_, h)| (h as u32) << (n - 1 - i)))
            .unwrap_or(720);
        (0..n)
            .find(|&i| {
                let h = self.layers[i]
                    .resolution
                    .map_or(top_height >> (n - 1 - i), |(_, h)| h as u32);
                h * 10 >= height * 9
            })
            .unwrap_or(n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simulcast() -> Track {
        Track::new(
            TrackInfo::new(TrackId(1), MediaKind::Video, Codec::Vp8, 90_000, 3),
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

    #[test]
    fn layer_costs_are_measured_or_extrapolated() {
        let now = Instant::now();
        let mut t = simulcast();
        assert_eq!(t.layer_bitrates(now), vec![150_000, 500_000, 1_500_000]);
        for i in 0..100u64 {
            t.layers[1]
                .rate
                .add(now + Duration::from_millis(10 * i), 500);
        }
        let later = now + Duration::from_millis(999);
        assert_eq!(t.layer_bitrates(later), vec![133_333, 400_000, 1_200_000]);
    }

    #[test]
    fn rendered_height_picks_a_layer() {
        let mut t = simulcast();
        // Unknown sizes: 180, 360, 720.
        assert_eq!(t.layer_for_height(100), 0);
        assert_eq!(t.layer_for_height(180), 0);
        assert_eq!(t.layer_for_height(300), 1);
        assert_eq!(t.layer_for_height(1080), 2);
        // Known from a keyframe: the top is 480 high.
        t.layers[2].resolution = Some((640, 480));
        assert_eq!(t.layer_for_height(240), 1);
        assert_eq!(t.layer_for_height(270), 2);
    }
}
