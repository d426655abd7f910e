//! The packet path of a [`Room`]: publishers' RTP in, rewritten copies out to every
//! subscription and relay sink; subscribers' NACKs, keyframe requests and congestion feedback;
//! and the duplicates that probe a subscriber's downlink.

use crate::codec::{Codec, MediaKind};
use crate::downlink::OVERHEAD;
use crate::edits::PacketEdits;
use crate::ids::{LayerIndex, SinkId, SubscriptionId, TrackId};
use crate::room::{Output, Room, RoomError, RoomStats};
use crate::subscription::Subscription;
use crate::track::{PublisherReport, Track};
use crate::vp8::Vp8Descriptor;
use rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtp::packet::Packet;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Probe packets sent in one probe step at most (bounds the work per step).
const MAX_PROBE_PACKETS_PER_STEP: usize = 128;
/// Probes copy at most this many of the packets just sent, then pad.
const RECENT_PACKETS: usize = 16;
/// How often duplicates go out while a probe runs.
pub(crate) const PROBE_STEP: Duration = Duration::from_millis(5);

impl Room {
    /// One RTP packet of a track's layer, as received from the publisher (or upstream node).
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
        mut packet: Packet,
    ) {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            self.stats.dropped_unknown += 1;
            return;
        };
        if track.muted {
            self.stats.dropped_muted += 1;
            return;
        }
        let Some(l) = track.layers.get_mut(layer) else {
            self.stats.dropped_unknown += 1;
            return;
        };
        if let Some(id) = track.info.audio_level_ext
            && let Some(level) = packet
                .header
                .get_extension(id)
                .and_then(|v| v.first().copied())
        {
            // RFC 6464: voice activity bit, then the level in -dBov.
            self.speakers.on_level(now, track_id, level & 0x7f);
        }
        // Extensions and CSRCs are negotiated per peer connection; none survive forwarding.
        packet.header.extensions.clear();
        packet.header.extension = false;
        packet.header.csrc.clear();
        let payload_len = packet.payload.len();
        self.stats.packets_in += 1;
        self.stats.bytes_in += payload_len as u64;
        let keyframe = payload_len > 0
            && track
                .info
                .codec
                .is_keyframe(track.info.kind, &packet.payload);
        let vp8 = (track.info.codec == Codec::Vp8 && payload_len > 0)
            .then(|| Vp8Descriptor::parse(&packet.payload))
            .flatten();
        // RED audio: parsed once; subscribers without RED get the primary block.
        let red = (track.info.red_payload_type == Some(packet.header.payload_type))
            .then(|| crate::red::primary(&packet.payload));
        self.stats.red_packets += red.is_some() as u64;
        let (ext_seq, _) = l.unwrapper.unwrap(packet.header.sequence_number);
        if payload_len > 0 {
            l.on_packet(now, payload_len + OVERHEAD);
        }
        if keyframe {
            l.keyframes.on_keyframe();
            if let Some(size) = vp8.and_then(|d| d.keyframe_size(&packet.payload)) {
                l.resolution = Some(size);
            }
        }
        for sub in &mut track.subscriptions {
            if matches!(red, Some(None)) && sub.red_payload_type.is_none() {
                // A RED payload whose blocks do not add up: no primary block to send.
                self.stats.dropped_malformed += 1;
                continue;
            }
            match sub.forwarder.forward_vp8(
                now,
                layer,
                &packet.header,
                payload_len,
                keyframe,
                vp8.as_ref(),
            ) {
                Ok(rewrite) => {
                    let mut header = rewrite.header(&packet.header);
                    let mut edits = PacketEdits::default();
                    let payload = match (rewrite.picture, &vp8, &red) {
                        // Shared as it is: the new numbering is written as it is sent.
                        (Some((pid, tl0)), Some(d), _) => {
                            edits.vp8 = Some(d.edit(pid, tl0));
                            packet.payload.clone()
                        }
                        (_, _, Some(primary)) => match (sub.red_payload_type, primary) {
                            (Some(pt), _) => {
                                header.payload_type = pt;
                                packet.payload.clone()
                            }
                            (None, Some((_, block))) => block.clone(),
                            (None, None) => packet.payload.clone(),
                        },
                        _ => packet.payload.clone(),
                    };
                    if let Some(d) = self.downlinks.get_mut(&sub.sink) {
                        edits.twcc = d.on_send(now, payload_len);
                    }
                    self.stats.packets_out += 1;
                    self.stats.bytes_out += payload_len as u64;
                    self.outputs.push_back(Output::Rtp {
                        sink: sub.sink,
                        subscription: sub.id,
                        packet: Packet { header, payload },
                        edits,
                    });
                }
                Err(reason) => self.stats.dropped[reason as usize] += 1,
            }
        }
        for relay in track.relays.iter().filter(|r| r.layer == layer) {
            self.stats.relayed += 1;
            self.outputs.push_back(Output::Relay {
                sink: relay.sink,
                subscription: relay.id,
                packet: Packet {
                    header: packet.header.clone(),
                    payload: packet.payload.clone(),
                },
            });
        }
        l.cache.insert(ext_seq, packet, now, keyframe);
    }

    /// Mutes or unmutes a track. Muted, nothing of it is forwarded; unmuted, video layers
    /// that anyone receives get a keyframe request so pictures come back at once.
    pub fn set_track_muted(
        &mut self,
        now: Instant,
        track_id: TrackId,
        muted: bool,
    ) -> Result<(), RoomError> {
        let track = self
            .tracks
            .get_mut(&track_id)
            .ok_or(RoomError::UnknownTrack(track_id))?;
        let was = std::mem::replace(&mut track.muted, muted);
        if was && !muted && track.info.kind == MediaKind::Video {
            let mut layers: Vec<LayerIndex> = track
                .subscriptions
                .iter()
                .filter_map(|s| s.forwarder.target_layer())
                .chain(track.relays.iter().map(|r| r.layer))
                .collect();
            layers.sort_unstable();
            layers.dedup();
            for layer in layers {
                request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
            }
        }
        Ok(())
    }

    /// The publisher's RTCP sender report for a layer.
    pub fn handle_sender_report(
        &mut self,
        now: Instant,
        track_id: TrackId,
        layer: LayerIndex,
        ntp: u64,
        rtp_time: u32,
    ) {
        if let Some(l) = self
            .tracks
            .get_mut(&track_id)
            .and_then(|t| t.layers.get_mut(layer))
        {
            l.report = Some(PublisherReport {
                ntp,
                rtp_time,
                received_at: now,
            });
        }
    }

    /// A subscriber asked for a keyframe (PLI or FIR).
    pub fn handle_keyframe_request(&mut self, now: Instant, id: SubscriptionId) {
        self.stats.keyframe_requests_received += 1;
        let Some(track) = self.index.get(&id).and_then(|t| self.tracks.get_mut(t)) else {
            return;
        };
        let Some(layer) = track
            .subscriptions
            .iter()
            .find(|s| s.id == id)
            .and_then(|s| s.forwarder.current_layer().or(s.forwarder.target_layer()))
        else {
            return;
        };
        request_keyframe(track, layer, now, &mut self.outputs, &mut self.stats);
    }

    /// A subscriber reported lost packets (sequence numbers as it received them). Answered from
    /// the retransmission cache, on the retransmission stream when one was negotiated; nothing
    /// goes to the publisher.
    pub fn handle_nack(&mut self, now: Instant, id: SubscriptionId, lost: &[u16]) {
        self.stats.nacks_received += lost.len() as u64;
        let Some(track) = self.index.get(&id).and_then(|t| self.tracks.get_mut(t)) else {
            self.stats.nack_misses += lost.len() as u64;
            return;
        };
        let Some(i) = track.subscriptions.iter().position(|s| s.id == id) else {
            return;
        };
        let sink = track.subscriptions[i].sink;
        let answered = lost.len().min(crate::resend::MAX_RESENT_PER_NACK);
        self.stats.nack_over_budget += (lost.len() - answered) as u64;
        for &out_seq in &lost[..answered] {
            if !track.subscriptions[i].resent.allow(now, out_seq) {
                self.stats.nack_repeats += 1;
                continue;
            }
            match retransmission(track, &track.subscriptions[i], out_seq, now) {
                Some(packet) => {
                    if let Some(d) = self.downlinks.get_mut(&sink) {
                        let estimate = d.budget(now);
                        let size = packet.payload.len() + crate::downlink::OVERHEAD;
                        if !d.retransmit_budget.allow(now, estimate, size) {
                            self.stats.nack_over_budget += 1;
                            continue;
                        }
                    }
                    let sub = &mut track.subscriptions[i];
                    let packet = match &mut sub.rtx {
                        Some(rtx) => rtx.wrap(&packet),
                        None => packet,
                    };
                    let mut edits = PacketEdits::default();
                    if let Some(d) = self.downlinks.get_mut(&sub.sink) {
                        edits.twcc = d.on_send(now, packet.payload.len());
                    }
                    self.stats.retransmitted += 1;
                    self.outputs.push_back(Output::Rtp {
                        sink: sub.sink,
                        subscription: sub.id,
                        packet,
                        edits,
                    });
                }
                None => self.stats.nack_misses += 1,
            }
        }
    }

    /// Transport-wide congestion control feedback from a subscriber.
    pub fn handle_transport_feedback(
        &mut self,
        now: Instant,
        sink: SinkId,
        feedback: &TransportLayerCc,
    ) {
        self.stats.congestion_feedback += 1;
        if let Some(d) = self.downlinks.get_mut(&sink) {
            d.estimator.on_twcc(now, feedback);
            judge_probes(d, now);
        }
    }

    /// A subscriber's REMB (receiver-side estimate), used when it sends no TWCC feedback.
    pub fn handle_remb(&mut self, now: Instant, sink: SinkId, bps: f64) {
        self.stats.congestion_feedback += 1;
        if let Some(d) = self.downlinks.get_mut(&sink) {
            d.estimator.on_remb(now, bps);
        }
    }

    /// Sends what running probes are due, and ends probes whose time is up. Probe packets go on
    /// a video subscription's retransmission stream: copies of packets just sent (the
    /// subscriber discards them as duplicates), then padding.
    pub(crate) fn step_probes(&mut self, now: Instant) {
        let mut any = false;
        let sinks: Vec<SinkId> = self
            .downlinks
            .iter()
            .filter(|(_, d)| d.prober.active().is_some())
            .map(|(s, _)| *s)
            .collect();
        for sink in sinks {
            let Some(d) = self.downlinks.get_mut(&sink) else {
                continue;
            };
            if let Some((id, packets)) = d.prober.poll_end(now) {
                d.estimator.end_probe(now, id, packets);
                continue;
            }
            any = true;
            let mut due = d.prober.bytes_due(now);
            if due == 0 {
                continue;
            }
            let Some((track_id, index)) = self.probe_carrier(sink) else {
                continue;
            };
            let Some(track) = self.tracks.get_mut(&track_id) else {
                continue;
            };
            let last = track.subscriptions[index].forwarder.last_sequence_number();
            let mut sent = 0;
            while due > 0 && sent < MAX_PROBE_PACKETS_PER_STEP {
                let copy = last.filter(|_| sent < RECENT_PACKETS).and_then(|l| {
                    let sub = &track.subscriptions[index];
                    retransmission(track, sub, l.wrapping_sub(sent as u16), now)
                });
                let sub = &mut track.subscriptions[index];
                let Some(rtx) = sub.rtx.as_mut() else { break };
                let packet = match copy {
                    Some(p) => rtx.wrap(&p),
                    None => rtx.padding(sub.forwarder.last_sent().map_or(0, |(ts, _)| ts)),
                };
                let len = packet.payload.len() + if packet.header.padding { 4 } else { 0 };
                let Some(d) = self.downlinks.get_mut(&sink) else {
                    break;
                };
                let edits = PacketEdits {
                    twcc: d.on_send(now, len),
                    vp8: None,
                };
                due = due.saturating_sub(len + OVERHEAD);
                sent += 1;
                self.stats.probe_packets += 1;
                self.outputs.push_back(Output::Rtp {
                    sink,
                    subscription: sub.id,
                    packet,
                    edits,
                });
            }
        }
        self.next_probe_step = any.then_some(now + PROBE_STEP);
    }

    /// The subscription a sink's probes ride on: a video subscription with a retransmission
    /// stream, preferably one that is flowing.
    pub(crate) fn probe_carrier(&self, sink: SinkId) -> Option<(TrackId, usize)> {
        let mut best: Option<(TrackId, usize, bool)> = None;
        for t in self.tracks.values() {
            if t.info.kind != MediaKind::Video {
                continue;
            }
            for (i, s) in t.subscriptions.iter().enumerate() {
                if s.sink == sink && s.rtx.is_some() {
                    let flowing = s.forwarder.current_layer().is_some();
                    if best.is_none_or(|(_, _, f)| flowing && !f) {
                        best = Some((t.info.id, i, flowing));
                    }
                }
            }
        }
        best.map(|(t, i, _)| (t, i))
    }
}

/// Passes probe verdicts from a downlink's estimator to its prober.
pub(crate) fn judge_probes(d: &mut crate::downlink::Downlink, now: Instant) {
    while let Some(outcome) = d.estimator.poll_probe_outcome() {
        let probed = d.prober.judging_rate();
        d.prober
            .on_outcome(now, outcome.id, probed, outcome.delivered_bps);
    }
}

/// The packet that went to a subscription as `out_seq`, rebuilt from the retransmission cache
/// exactly as it was sent (header rewrite and VP8 numbering), if it is still cached.
pub(crate) fn retransmission(
    track: &Track,
    sub: &Subscription,
    out_seq: u16,
    now: Instant,
) -> Option<Packet> {
    let (layer, in_seq) = sub.forwarder.map_nack(out_seq)?;
    let cached = track.layers.get(layer)?.cache.get(in_seq, now)?.packet;
    let vp8 = (track.info.codec == Codec::Vp8)
        .then(|| Vp8Descriptor::parse(&cached.payload))
        .flatten();
    let rewrite = sub
        .forwarder
        .rewrite_retransmission(out_seq, &cached.header, vp8.as_ref())?;
    let payload = match (rewrite.picture, &vp8) {
        (Some((pid, tl0)), Some(d)) => d.rewrite(&cached.payload, pid, tl0),
        _ => cached.payload.clone(),
    };
    Some(Packet {
        header: rewrite.header(&cached.header),
        payload,
    })
}

/// Asks for a keyframe on a layer, coalesced by the layer's requester.
pub(crate) fn request_keyframe(
    track: &mut Track,
    layer: LayerIndex,
    now: Instant,
    outputs: &mut VecDeque<Output>,
    stats: &mut RoomStats,
) {
    let Some(l) = track.layers.get_mut(layer) else {
        return;
    };
    if l.keyframes.request(now) {
        stats.keyframe_requests_sent += 1;
        outputs.push_back(Output::KeyframeRequest {
            track: track.info.id,
            layer,
        });
    }
}
