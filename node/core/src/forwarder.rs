//! The per-subscription packet logic: drop or forward, and rewrite.
//!
//! A subscriber sees one continuous RTP stream per subscription, whatever happens upstream: the
//! forwarder starts it at a keyframe, switches simulcast layers only at keyframes, and survives
//! a change of source track. To do that it rewrites
//!
//! - the SSRC, to the one negotiated with the subscriber;
//! - the sequence number, so it stays gap-free across switches (`out = in + delta`, where
//!   `delta` is recomputed at every switch so that the first packet of the new source follows
//!   the last packet sent);
//! - the timestamp, so that time keeps moving forward by the wall-clock time that passed between
//!   the last packet of the old source and the first of the new one;
//! - the payload type, to the one negotiated with the subscriber.
//!
//! - the VP8 picture id and TL0PICIDX, so the decoder sees no jump back (see [`crate::vp8`]).
//!
//! It keeps a short history of these mappings ("epochs") so that a NACK for an output sequence
//! number can be traced back to the source packet in the retransmission cache.

use crate::clock::rtp_ticks;
use crate::codec::MediaKind;
use crate::ids::LayerIndex;
use crate::seq::{Unwrapper, extend};
use crate::vp8::{Vp8Descriptor, Vp8Numbering};
use rtp::header::Header;
use std::collections::VecDeque;
use std::time::Instant;

/// How many past mappings are remembered for answering NACKs.
const EPOCH_HISTORY: usize = 16;

/// Why a packet was not forwarded to a subscriber.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DropReason {
    /// From a layer other than the one being forwarded.
    OtherLayer,
    /// Video that cannot be decoded yet: the subscriber waits for a keyframe.
    WaitingForKeyframe,
    /// A padding-only packet (bandwidth probing by the publisher); useless downstream.
    Padding,
    /// A late packet from before the last switch.
    BeforeSwitch,
    /// The subscription is paused (no target layer).
    Paused,
}

impl DropReason {
    /// All reasons, for metrics.
    pub const ALL: [DropReason; 5] = [
        DropReason::OtherLayer,
        DropReason::WaitingForKeyframe,
        DropReason::Padding,
        DropReason::BeforeSwitch,
        DropReason::Paused,
    ];

    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::OtherLayer => "other_layer",
            DropReason::WaitingForKeyframe => "waiting_for_keyframe",
            DropReason::Padding => "padding",
            DropReason::BeforeSwitch => "before_switch",
            DropReason::Paused => "paused",
        }
    }
}

/// The rewritten header fields of a forwarded packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Rewrite {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub payload_type: u8,
    /// VP8 picture id and TL0PICIDX to write into the payload, when they differ from the
    /// source's (the payload is then copied; otherwise it is shared).
    pub picture: Option<(u16, u8)>,
}

impl Rewrite {
    /// A fresh header for the subscriber, carrying over only the marker bit. Extensions and
    /// CSRCs are not copied: their ids are negotiated per peer connection.
    pub fn header(&self, source: &Header) -> Header {
        Header {
            version: 2,
            padding: false,
            extension: false,
            marker: source.marker,
            payload_type: self.payload_type,
            sequence_number: self.sequence_number,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        }
    }
}

/// Output parameters negotiated with the subscriber.
#[derive(Clone, Copy, Debug)]
pub struct ForwarderConfig {
    pub kind: MediaKind,
    pub ssrc: u32,
    pub payload_type: u8,
    pub clock_rate: u32,
}

/// The mapping from one source's packets to output packets.
#[derive(Clone, Copy, Debug)]
struct Epoch {
    /// First output extended sequence number of this epoch.
    first_out: u64,
    layer: LayerIndex,
    /// `out_ext = in_ext + seq_delta`.
    seq_delta: i64,
    /// `out_ts = in_ts + ts_offset` (wrapping).
    ts_offset: u32,
    /// VP8 numbering offsets (picture id, TL0PICIDX).
    picture: (u16, u8),
}

/// The source currently forwarded.
#[derive(Clone, Debug)]
struct Source {
    layer: LayerIndex,
    unwrapper: Unwrapper,
    first_in: u64,
    seq_delta: i64,
    ts_offset: u32,
}

#[derive(Clone, Copy, Debug)]
struct LastOut {
    ext_seq: u64,
    timestamp: u32,
    at: Instant,
}

/// Per-subscription forwarding state. See the module documentation.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    target: Option<LayerIndex>,
    source: Option<Source>,
    last_out: Option<LastOut>,
    epochs: VecDeque<Epoch>,
    vp8: Vp8Numbering,
    packets_sent: u32,
    octets_sent: u32,
}

impl Forwarder {
    /// A forwarder that will start at the first keyframe of `target`.
    pub fn new(config: ForwarderConfig, target: Option<LayerIndex>) -> Self {
        Self {
            config,
            target,
            source: None,
            last_out: None,
            epochs: VecDeque::with_capacity(EPOCH_HISTORY),
            vp8: Vp8Numbering::default(),
            packets_sent: 0,
            octets_sent: 0,
        }
    }

    pub fn config(&self) -> &ForwarderConfig {
        &self.config
    }

    /// The layer the subscriber should receive; `None` pauses the subscription.
    pub fn target_layer(&self) -> Option<LayerIndex> {
        self.target
    }

    /// The layer currently forwarded.
    pub fn current_layer(&self) -> Option<LayerIndex> {
        self.source.as_ref().map(|s| s.layer)
    }

    /// Sets the layer to forward. Returns `true` if that needs a keyframe on the new layer (the
    /// switch happens at the first one). Pausing (`None`) forgets the source, so that resuming
    /// is a clean switch: it starts at a keyframe and the output continues without a gap.
    pub fn set_target_layer(&mut self, target: Option<LayerIndex>) -> bool {
        self.target = target;
        if target.is_none() {
            self.source = None;
        }
        target.is_some() && self.current_layer() != target
    }

    /// The layer a keyframe is awaited on, if any.
    pub fn awaiting_keyframe(&self) -> Option<LayerIndex> {
        match (self.target, self.current_layer()) {
            (Some(t), Some(c)) if t == c => None,
            (t, _) => t,
        }
    }

    /// The upstream source is about to change (a different track feeds this subscription).
    /// Output continuity is kept: the next source starts right after the last packet sent.
    pub fn reset_source(&mut self) {
        self.source = None;
    }

    /// Decides about one packet of layer `layer` and returns the rewritten header fields.
    pub fn forward(
        &mut self,
        now: Instant,
        layer: LayerIndex,
        header: &Header,
        payload_len: usize,
        keyframe: bool,
    ) -> Result<Rewrite, DropReason> {
        self.forward_vp8(now, layer, header, payload_len, keyframe, None)
    }

    /// [`forward`](Self::forward) for a packet whose VP8 descriptor was parsed.
    pub fn forward_vp8(
        &mut self,
        now: Instant,
        layer: LayerIndex,
        header: &Header,
        payload_len: usize,
        keyframe: bool,
        vp8: Option<&Vp8Descriptor>,
    ) -> Result<Rewrite, DropReason> {
        let Some(target) = self.target else {
            return Err(DropReason::Paused);
        };
        let current = self.source.as_ref().map(|s| s.layer);
        if current != Some(layer) {
            if layer != target {
                return Err(if current.is_none() {
                    DropReason::WaitingForKeyframe
                } else {
                    DropReason::OtherLayer
                });
            }
            let decodable = keyframe || self.config.kind == MediaKind::Audio;
            if !decodable || payload_len == 0 {
                return Err(if current.is_none() {
                    DropReason::WaitingForKeyframe
                } else {
                    DropReason::OtherLayer
                });
            }
            self.switch_to(now, layer, header);
            self.vp8.on_switch();
        }

        let Some(source) = self.source.as_mut() else {
            return Err(DropReason::WaitingForKeyframe);
        };
        let (in_ext, newest) = source.unwrapper.unwrap(header.sequence_number);
        if in_ext < source.first_in {
            return Err(DropReason::BeforeSwitch);
        }
        if payload_len == 0 {
            // Padding only. Swallow its sequence number if it is the next one, so the output has
            // no gap the subscriber would NACK.
            if newest {
                source.seq_delta -= 1;
                let (first_out, layer, seq_delta, ts_offset) = (
                    (in_ext as i64 + source.seq_delta + 1) as u64,
                    source.layer,
                    source.seq_delta,
                    source.ts_offset,
                );
                self.push_epoch(Epoch {
                    first_out,
                    layer,
                    seq_delta,
                    ts_offset,
                    picture: self.vp8.offsets(),
                });
            }
            return Err(DropReason::Padding);
        }
        let out_ext = (in_ext as i64 + source.seq_delta) as u64;
        let timestamp = header.timestamp.wrapping_add(source.ts_offset);
        if self.last_out.is_none_or(|l| out_ext > l.ext_seq) {
            self.last_out = Some(LastOut {
                ext_seq: out_ext,
                timestamp,
                at: now,
            });
        }
        let picture = vp8.and_then(|d| {
            let before = self.vp8.offsets();
            let mapped = self.vp8.map(d);
            if self.vp8.offsets() != before
                && let Some(e) = self.epochs.back_mut()
            {
                // Offsets are chosen at the first packet of a source, which opened this epoch.
                e.picture = self.vp8.offsets();
            }
            mapped
        });
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.octets_sent = self.octets_sent.wrapping_add(payload_len as u32);
        Ok(Rewrite {
            ssrc: self.config.ssrc,
            sequence_number: out_ext as u16,
            timestamp,
            payload_type: self.config.payload_type,
            picture,
        })
    }

    fn switch_to(&mut self, now: Instant, layer: LayerIndex, header: &Header) {
        let mut unwrapper = Unwrapper::default();
        let (in_ext, _) = unwrapper.unwrap(header.sequence_number);
        let (seq_delta, ts_offset) = match self.last_out {
            None => (0, 0),
            Some(last) => {
                let next_out = last.ext_seq + 1;
                // Advance the clock by the time that really passed, at least one tick, so the
                // subscriber's jitter buffer never sees time going backwards.
                let elapsed = rtp_ticks(
                    now.saturating_duration_since(last.at),
                    self.config.clock_rate,
                );
                let next_ts = last.timestamp.wrapping_add(elapsed.max(1));
                (
                    next_out as i64 - in_ext as i64,
                    next_ts.wrapping_sub(header.timestamp),
                )
            }
        };
        self.source = Some(Source {
            layer,
            unwrapper,
            first_in: in_ext,
            seq_delta,
            ts_offset,
        });
        self.push_epoch(Epoch {
            first_out: (in_ext as i64 + seq_delta) as u64,
            layer,
            seq_delta,
            ts_offset,
            picture: self.vp8.offsets(),
        });
    }

    fn push_epoch(&mut self, epoch: Epoch) {
        if self.epochs.len() == EPOCH_HISTORY {
            self.epochs.pop_front();
        }
        self.epochs.push_back(epoch);
    }

    /// Traces an output sequence number (from a subscriber's NACK) back to its source packet:
    /// the layer and the source sequence number.
    pub fn map_nack(&self, out_seq: u16) -> Option<(LayerIndex, u16)> {
        let last = self.last_out?;
        let out_ext = extend(last.ext_seq, out_seq);
        if out_ext > last.ext_seq {
            return None;
        }
        let epoch = self.epochs.iter().rev().find(|e| e.first_out <= out_ext)?;
        let in_ext = out_ext as i64 - epoch.seq_delta;
        Some((epoch.layer, in_ext as u16))
    }

    /// Rewrites a retransmitted source packet exactly as it was rewritten the first time.
    pub fn rewrite_retransmission(
        &self,
        out_seq: u16,
        header: &Header,
        vp8: Option<&Vp8Descriptor>,
    ) -> Option<Rewrite> {
        let last = self.last_out?;
        let out_ext = extend(last.ext_seq, out_seq);
        let epoch = self.epochs.iter().rev().find(|e| e.first_out <= out_ext)?;
        Some(Rewrite {
            ssrc: self.config.ssrc,
            sequence_number: out_seq,
            timestamp: header.timestamp.wrapping_add(epoch.ts_offset),
            payload_type: self.config.payload_type,
            picture: vp8.and_then(|d| Vp8Numbering::map_with(d, epoch.picture)),
        })
    }

    /// The last output sequence number sent, if any (used to pick packets to probe with).
    pub fn last_sequence_number(&self) -> Option<u16> {
        self.last_out.map(|l| l.ext_seq as u16)
    }

    /// Timestamp offset of the current source (`out = in + offset`).
    pub fn timestamp_offset(&self) -> Option<u32> {
        self.source.as_ref().map(|s| s.ts_offset)
    }

    /// The last forwarded packet's output timestamp and when it was sent.
    pub fn last_sent(&self) -> Option<(u32, Instant)> {
        self.last_out.map(|l| (l.timestamp, l.at))
    }

    /// Packets and payload octets sent, as sender reports count them.
    pub fn counters(&self) -> (u32, u32) {
        (self.packets_sent, self.octets_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn video() -> Forwarder {
        Forwarder::new(
            ForwarderConfig {
                kind: MediaKind::Video,
                ssrc: 0xabc,
                payload_type: 96,
                clock_rate: 90_000,
            },
            Some(0),
        )
    }

    fn header(seq: u16, ts: u32) -> Header {
        Header {
            sequence_number: seq,
            timestamp: ts,
            ssrc: 1,
            payload_type: 100,
            ..Default::default()
        }
    }

    #[test]
    fn starts_at_a_keyframe_and_rewrites_ssrc_and_payload_type() {
        let now = Instant::now();
        let mut f = video();
        assert_eq!(
            f.forward(now, 0, &header(10, 1000), 100, false),
            Err(DropReason::WaitingForKeyframe)
        );
        let r = f.forward(now, 0, &header(11, 1000), 100, true).unwrap();
        assert_eq!((r.ssrc, r.payload_type), (0xabc, 96));
        let r2 = f.forward(now, 0, &header(12, 4000), 100, false).unwrap();
        assert_eq!(r2.sequence_number, r.sequence_number.wrapping_add(1));
        assert_eq!(r2.timestamp.wrapping_sub(r.timestamp), 3000);
    }

    #[test]
    fn a_layer_switch_keeps_sequence_and_timestamp_continuous() {
        let t0 = Instant::now();
        let mut f = video();
        f.forward(t0, 0, &header(100, 9000), 100, true).unwrap();
        for i in 1..10u16 {
            f.forward(t0, 0, &header(100 + i, 9000 + 3000 * i as u32), 100, false)
                .unwrap();
        }
        assert!(f.set_target_layer(Some(1)));
        // Layer 0 keeps flowing until layer 1 has a keyframe; layer 1 non-keyframes are dropped.
        assert_eq!(
            f.forward(t0, 1, &header(5000, 777), 100, false),
            Err(DropReason::OtherLayer)
        );
        let last = f.forward(t0, 0, &header(110, 39_000), 100, false).unwrap();
        let t1 = t0 + Duration::from_millis(33);
        let first = f.forward(t1, 1, &header(5001, 123_456), 100, true).unwrap();
        assert_eq!(first.sequence_number, last.sequence_number.wrapping_add(1));
        assert_eq!(first.timestamp.wrapping_sub(last.timestamp), 2970);
        // Now layer 0 is the other one.
        assert_eq!(
            f.forward(t1, 0, &header(111, 42_000), 100, false),
            Err(DropReason::OtherLayer)
        );
        let next = f
            .forward(t1, 1, &header(5002, 126_456), 100, false)
            .unwrap();
        assert_eq!(next.sequence_number, first.sequence_number.wrapping_add(1));
        assert_eq!(next.timestamp.wrapping_sub(first.timestamp), 3000);
        // A late packet of the new layer from before the switch.
        assert_eq!(
            f.forward(t1, 1, &header(5000, 120_456), 100, false),
            Err(DropReason::BeforeSwitch)
        );
    }

    #[test]
    fn a_source_change_keeps_the_output_continuous_across_a_sequence_wrap() {
        let t0 = Instant::now();
        let mut f = video();
        let mut last = f.forward(t0, 0, &header(65_530, 1), 100, true).unwrap();
        for i in 1..10u16 {
            last = f
                .forward(t0, 0, &header(65_530u16.wrapping_add(i), 1), 100, false)
                .unwrap();
        }
        f.reset_source();
        let first = f
            .forward(t0 + Duration::from_millis(1), 0, &header(7, 5), 100, true)
            .unwrap();
        assert_eq!(first.sequence_number, last.sequence_number.wrapping_add(1));
        assert_eq!(first.timestamp.wrapping_sub(last.timestamp), 90);
    }

    #[test]
    fn padding_is_dropped_without_leaving_a_gap() {
        let t0 = Instant::now();
        let mut f = video();
        let a = f.forward(t0, 0, &header(1, 0), 100, true).unwrap();
        assert_eq!(
            f.forward(t0, 0, &header(2, 0), 0, false),
            Err(DropReason::Padding)
        );
        assert_eq!(
            f.forward(t0, 0, &header(3, 0), 0, false),
            Err(DropReason::Padding)
        );
        let b = f.forward(t0, 0, &header(4, 0), 100, false).unwrap();
        assert_eq!(b.sequence_number, a.sequence_number.wrapping_add(1));
        // NACK for b maps back to source seq 4.
        assert_eq!(f.map_nack(b.sequence_number), Some((0, 4)));
        assert_eq!(f.map_nack(a.sequence_number), Some((0, 1)));
    }

    #[test]
    fn nacks_map_back_through_switches() {
        let t0 = Instant::now();
        let mut f = video();
        let a = f.forward(t0, 0, &header(10, 0), 100, true).unwrap();
        f.set_target_layer(Some(2));
        let b = f.forward(t0, 2, &header(900, 50), 100, true).unwrap();
        assert_eq!(f.map_nack(a.sequence_number), Some((0, 10)));
        assert_eq!(f.map_nack(b.sequence_number), Some((2, 900)));
        assert_eq!(
            f.map_nack(b.sequence_number.wrapping_add(1)),
            None,
            "not sent yet"
        );
        let re = f
            .rewrite_retransmission(a.sequence_number, &header(10, 0), None)
            .unwrap();
        assert_eq!(re, a);
    }

    #[test]
    fn audio_switches_on_any_packet_and_pause_drops() {
        let t0 = Instant::now();
        let mut f = Forwarder::new(
            ForwarderConfig {
                kind: MediaKind::Audio,
                ssrc: 5,
                payload_type: 111,
                clock_rate: 48_000,
            },
            Some(0),
        );
        assert!(f.forward(t0, 0, &header(1, 0), 50, false).is_ok());
        f.set_target_layer(None);
        assert_eq!(
            f.forward(t0, 0, &header(2, 960), 50, false),
            Err(DropReason::Paused)
        );
        assert_eq!(f.awaiting_keyframe(), None);
    }
}
