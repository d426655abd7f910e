//! A subscriber behind a bottleneck, in virtual time: a publisher sending three VP8 simulcast
//! layers and Opus into a [`Room`], one subscriber whose downlink is a FIFO link of a given
//! rate with a drop-tail queue and a base delay, and the subscriber reporting TWCC feedback as
//! a browser does. Used by the congestion test and by the `bottleneck` benchmark example.

use bytes::{BufMut, Bytes, BytesMut};
use sfu_core::twcc_feedback::twcc_feedback;
use sfu_core::{
    Codec, LayerIndex, MediaKind, Output, Packet, Room, RoomConfig, RtxParams, SinkId, SinkParams,
    SubscriptionId, SubscriptionParams, TrackId, TrackInfo, WallClock,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

pub const VIDEO: TrackId = TrackId(0x71de0);
pub const AUDIO: TrackId = TrackId(0xa0d10);
const SINK: SinkId = SinkId(1);
const TWCC_EXT: u8 = 5;
const RTX_SSRC: u32 = 3;
/// Bytes a packet takes on the wire beyond its payload (RTP with extension, SRTP, UDP/IP).
const WIRE_OVERHEAD: usize = 12 + 8 + 10 + 28;
const MAX_PAYLOAD: usize = 1_100;
const STEP: Duration = Duration::from_millis(1);

/// The media and the path.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    /// Bitrate of each simulcast layer, lowest first.
    pub layers_bps: [u64; 3],
    pub audio_payload: usize,
    pub fps: u32,
    pub keyframe_interval: Duration,
    /// One-way delay of the path without queueing.
    pub base_delay: Duration,
    /// The bottleneck drops packets that would wait longer than this in its queue.
    pub queue: Duration,
    /// How often the subscriber sends TWCC feedback.
    pub feedback_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            layers_bps: [150_000, 500_000, 1_500_000],
            audio_payload: 100,
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
            base_delay: Duration::from_millis(25),
            queue: Duration::from_millis(400),
            feedback_interval: Duration::from_millis(50),
        }
    }
}

/// What the simulation observed.
#[derive(Default, Debug)]
pub struct Observed {
    pub audio_sent: u64,
    pub audio_dropped: u64,
    /// When audio packets were dropped at the bottleneck.
    pub audio_drops_at: Vec<Instant>,
    pub audio_received: u64,
    pub video_dropped: u64,
    /// Packets on the retransmission stream (probes).
    pub rtx_packets: u64,
    /// Output sequence numbers that skipped ahead (a gap the subscriber would see).
    pub video_seq_gaps: u64,
    pub audio_seq_gaps: u64,
    /// VP8 picture ids that went backwards.
    pub picture_id_regressions: u64,
    /// (time, bytes) of video and audio delivered to the subscriber.
    pub delivered: Vec<(Instant, usize, bool)>,
    /// (time, layer) whenever the forwarded layer changed.
    pub layers: Vec<(Instant, Option<LayerIndex>)>,
}

pub struct Sim {
    pub config: SimConfig,
    pub t0: Instant,
    pub now: Instant,
    pub room: Room,
    pub video_sub: SubscriptionId,
    pub audio_sub: SubscriptionId,
    /// The bottleneck's rate, changeable at any time.
    pub link_bps: f64,
    pub observed: Observed,
    frame: u64,
    next_frame: Instant,
    next_audio: Instant,
    keyframe: [bool; 3],
    seq: [u16; 3],
    audio_seq: u16,
    link_free: Instant,
    in_flight: VecDeque<(Instant, Packet)>,
    /// Transport-wide sequence number (unwrapped) → arrival, awaiting feedback.
    arrivals: BTreeMap<u64, Option<Duration>>,
    twcc_highest: Option<u64>,
    next_feedback: Instant,
    feedback_queue: VecDeque<(
        Instant,
        rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc,
    )>,
    feedback_count: u8,
    max_video_seq: Option<u64>,
    max_audio_seq: Option<u64>,
    last_pid: Option<u16>,
    last_layer: Option<LayerIndex>,
}

fn unwrap(last: Option<u64>, seq: u16) -> u64 {
    match last {
        None => (1 << 16) | seq as u64,
        Some(l) => {
            let base = l & !0xffff;
            let c = base | seq as u64;
            if c + 0x8000 < l {
                c + 0x10000
            } else if c > l + 0x8000 && c >= 0x10000 {
                c - 0x10000
            } else {
                c
            }
        }
    }
}

impl Sim {
    pub fn new(config: SimConfig, link_bps: f64) -> Self {
        let t0 = Instant::now();
        let mut room = Room::new(WallClock::new(t0, Duration::ZERO), RoomConfig::default());
        let mut video = TrackInfo::new(VIDEO, MediaKind::Video, Codec::Vp8, 90_000, 3);
        video.participant = "publisher".into();
        let mut audio = TrackInfo::new(AUDIO, MediaKind::Audio, Codec::Opus, 48_000, 1);
        audio.participant = "publisher".into();
        room.add_track(t0, video).unwrap();
        room.add_track(t0, audio).unwrap();
        room.set_sink(
            SINK,
            SinkParams {
                twcc_ext: Some(TWCC_EXT),
                remb: false,
            },
        );
        let video = SubscriptionParams {
            ssrc: 1,
            payload_type: 96,
            max_layer: 2,
            rtx: Some(RtxParams {
                ssrc: RTX_SSRC,
                payload_type: 97,
            }),
            red_payload_type: None,
        };
        let audio = SubscriptionParams {
            ssrc: 2,
            payload_type: 111,
            max_layer: 0,
            rtx: None,
            red_payload_type: None,
        };
        let video_sub = room.subscribe(t0, VIDEO, SINK, video).unwrap();
        let audio_sub = room.subscribe(t0, AUDIO, SINK, audio).unwrap();
        Self {
            config,
            t0,
            now: t0,
            room,
            video_sub,
            audio_sub,
            link_bps,
            observed: Observed::default(),
            frame: 0,
            next_frame: t0,
            next_audio: t0,
            keyframe: [true; 3],
            seq: [1_000, 20_000, 40_000],
            audio_seq: 7,
            link_free: t0,
            in_flight: VecDeque::new(),
            arrivals: BTreeMap::new(),
            twcc_highest: None,
            next_feedback: t0 + config.feedback_interval,
            feedback_queue: VecDeque::new(),
            feedback_count: 0,
            max_video_seq: None,
            max_audio_seq: None,
            last_pid: None,
            last_layer: None,
        }
    }

    /// Audio packets dropped at the bottleneck between two times (seconds since start).
    pub fn audio_drops_between(&self, from: f64, to: f64) -> usize {
        let (a, b) = (
            self.t0 + Duration::from_secs_f64(from),
            self.t0 + Duration::from_secs_f64(to),
        );
        self.observed
            .audio_drops_at
            .iter()
            .filter(|t| **t >= a && **t < b)
            .count()
    }

    pub fn current_layer(&self) -> Option<LayerIndex> {
        self.room
            .subscription(self.video_sub)
            .and_then(|s| s.forwarder().current_layer())
    }

    /// Runs until `secs` seconds since the start.
    pub fn run_until(&mut self, secs: f64) {
        let end = self.t0 + Duration::from_secs_f64(secs);
        while self.now < end {
            self.now += STEP;
            self.publish();
            while let Some(t) = self.room.poll_timeout() {
                if t > self.now {
                    break;
                }
                self.room.handle_timeout(self.now);
            }
            self.drain();
            self.deliver();
            self.feedback();
            let layer = self.current_layer();
            if layer != self.last_layer {
                self.last_layer = layer;
                self.observed.layers.push((self.now, layer));
            }
        }
    }

    fn publish(&mut self) {
        let now = self.now;
        while self.next_audio <= now {
            self.next_audio += Duration::from_millis(20);
            self.audio_seq = self.audio_seq.wrapping_add(1);
            let packet = Packet {
                header: rtp::header::Header {
                    version: 2,
                    payload_type: 111,
                    sequence_number: self.audio_seq,
                    timestamp: self.audio_seq as u32 * 960,
                    ssrc: 0xa,
                    ..Default::default()
                },
                payload: Bytes::from(vec![0xfc; self.config.audio_payload]),
            };
            self.room.handle_rtp(now, AUDIO, 0, packet);
            self.drain();
        }
        while self.next_frame <= now {
            self.next_frame += Duration::from_secs(1) / self.config.fps;
            let periodic = self.frame.is_multiple_of(
                (self.config.keyframe_interval.as_secs_f64() * self.config.fps as f64) as u64,
            );
            // Browsers number simulcast layers in step: one picture id for all.
            let pid = (self.frame & 0x7fff) as u16;
            for layer in 0..3 {
                let key = periodic || std::mem::take(&mut self.keyframe[layer]);
                let bytes = self.config.layers_bps[layer] / 8 / self.config.fps as u64;
                let bytes = if key { bytes * 3 } else { bytes } as usize;
                let packets = bytes.div_ceil(MAX_PAYLOAD).max(1);
                for i in 0..packets {
                    self.seq[layer] = self.seq[layer].wrapping_add(1);
                    let len = if i + 1 == packets {
                        (bytes - MAX_PAYLOAD * i).max(24)
                    } else {
                        MAX_PAYLOAD
                    };
                    let packet = Packet {
                        header: rtp::header::Header {
                            version: 2,
                            payload_type: 96,
                            marker: i + 1 == packets,
                            sequence_number: self.seq[layer],
                            timestamp: (self.frame * 3_000) as u32,
                            ssrc: 0x100 + layer as u32,
                            ..Default::default()
                        },
                        payload: vp8_payload(pid, self.frame as u8, i == 0, key, layer, len),
                    };
                    self.room.handle_rtp(now, VIDEO, layer, packet);
                    self.drain();
                }
            }
            self.frame += 1;
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.room.poll_output() {
            match o {
                Output::Rtp {
                    subscription,
                    packet,
                    edits,
                    ..
                } => self.send(subscription, edits.applied(&packet)),
                Output::KeyframeRequest { layer, .. } => self.keyframe[layer.min(2)] = true,
                _ => {}
            }
        }
    }

    /// The SFU's output towards the subscriber, into the bottleneck.
    fn send(&mut self, subscription: SubscriptionId, packet: Packet) {
        let audio = subscription == self.audio_sub;
        if packet.header.ssrc == RTX_SSRC {
            self.observed.rtx_packets += 1;
            self.enqueue(packet, false);
            return;
        }
        let seq = packet.header.sequence_number;
        let (max, gaps) = if audio {
            (&mut self.max_audio_seq, &mut self.observed.audio_seq_gaps)
        } else {
            (&mut self.max_video_seq, &mut self.observed.video_seq_gaps)
        };
        let ext = unwrap(*max, seq);
        let new = max.is_none_or(|m| ext > m);
        if let Some(m) = *max
            && ext > m + 1
        {
            *gaps += 1;
        }
        if new {
            *max = Some(ext);
            if !audio {
                let pid = u16::from_be_bytes([packet.payload[2] & 0x7f, packet.payload[3]]);
                if let Some(last) = self.last_pid
                    && pid.wrapping_sub(last) & 0x7fff >= 0x4000
                {
                    self.observed.picture_id_regressions += 1;
                }
                self.last_pid = Some(pid);
            }
        }
        if audio {
            self.observed.audio_sent += 1;
        }
        self.enqueue(packet, audio);
    }

    /// Into the bottleneck's queue, or dropped if it is full.
    fn enqueue(&mut self, packet: Packet, audio: bool) {
        let size = packet.payload.len() + WIRE_OVERHEAD;
        let start = self.link_free.max(self.now);
        if start.duration_since(self.now) > self.config.queue {
            if audio {
                self.observed.audio_dropped += 1;
                self.observed.audio_drops_at.push(self.now);
            } else {
                self.observed.video_dropped += 1;
            }
            // The receiver learns of the loss from the gap in transport-wide numbers.
            if let Some(twcc) = twcc_seq(&packet) {
                let t = unwrap(self.twcc_highest, twcc);
                self.twcc_highest = Some(self.twcc_highest.map_or(t, |h| h.max(t)));
                self.arrivals.insert(t, None);
            }
            return;
        }
        self.link_free = start + Duration::from_secs_f64(size as f64 * 8.0 / self.link_bps);
        self.in_flight
            .push_back((self.link_free + self.config.base_delay, packet));
    }

    fn deliver(&mut self) {
        while self
            .in_flight
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            let Some((at, packet)) = self.in_flight.pop_front() else {
                break;
            };
            let audio = packet.header.ssrc == 2;
            if audio {
                self.observed.audio_received += 1;
            }
            self.observed
                .delivered
                .push((at, packet.payload.len() + WIRE_OVERHEAD, audio));
            if let Some(twcc) = twcc_seq(&packet) {
                let t = unwrap(self.twcc_highest, twcc);
                self.twcc_highest = Some(self.twcc_highest.map_or(t, |h| h.max(t)));
                self.arrivals.insert(t, Some(at.duration_since(self.t0)));
            }
        }
    }

    fn feedback(&mut self) {
        if self.now >= self.next_feedback {
            self.next_feedback += self.config.feedback_interval;
            // Report up to the newest arrival; later drops are reported with the next one.
            if let Some((&last_arrived, _)) = self.arrivals.iter().rev().find(|(_, a)| a.is_some())
                && let Some((&first, _)) = self.arrivals.iter().next()
            {
                let range: Vec<Option<Duration>> = (first..=last_arrived)
                    .map(|t| self.arrivals.get(&t).copied().flatten())
                    .collect();
                let fb = twcc_feedback(first as u16, &range, self.feedback_count);
                self.feedback_count = self.feedback_count.wrapping_add(1);
                self.arrivals.retain(|t, _| *t > last_arrived);
                // The feedback travels back over an uncongested path.
                self.feedback_queue
                    .push_back((self.now + self.config.base_delay, fb));
            }
        }
        while self
            .feedback_queue
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            if let Some((_, fb)) = self.feedback_queue.pop_front() {
                self.room.handle_transport_feedback(self.now, SINK, &fb);
            }
        }
    }

    /// Bits per second delivered to the subscriber between two times (seconds since start).
    pub fn goodput(&self, from: f64, to: f64, audio: bool) -> f64 {
        let (a, b) = (
            self.t0 + Duration::from_secs_f64(from),
            self.t0 + Duration::from_secs_f64(to),
        );
        let bytes: usize = self
            .observed
            .delivered
            .iter()
            .filter(|(t, _, is_audio)| *t >= a && *t < b && *is_audio == audio)
            .map(|(_, n, _)| n)
            .sum();
        bytes as f64 * 8.0 / (to - from)
    }

    /// The first time at or after `from` seconds that the forwarded layer was `layer`.
    pub fn reached(&self, layer: LayerIndex, from: f64) -> Option<f64> {
        let from = self.t0 + Duration::from_secs_f64(from);
        let mut current = self
            .observed
            .layers
            .iter()
            .rev()
            .find(|(t, _)| *t <= from)
            .and_then(|(_, l)| *l);
        if current == Some(layer) {
            return Some(from.duration_since(self.t0).as_secs_f64());
        }
        for (t, l) in self.observed.layers.iter().filter(|(t, _)| *t > from) {
            current = *l;
            if current == Some(layer) {
                return Some(t.duration_since(self.t0).as_secs_f64());
            }
        }
        None
    }

    /// The layers forwarded at any time between `from` and `to` seconds.
    pub fn layers_between(&self, from: f64, to: f64) -> Vec<Option<LayerIndex>> {
        let (a, b) = (
            self.t0 + Duration::from_secs_f64(from),
            self.t0 + Duration::from_secs_f64(to),
        );
        let mut out: Vec<Option<LayerIndex>> = self
            .observed
            .layers
            .iter()
            .rev()
            .find(|(t, _)| *t <= a)
            .map(|(_, l)| vec![*l])
            .unwrap_or_default();
        out.extend(
            self.observed
                .layers
                .iter()
                .filter(|(t, _)| *t > a && *t < b)
                .map(|(_, l)| *l),
        );
        out.dedup();
        out
    }
}

fn twcc_seq(p: &Packet) -> Option<u16> {
    let v = p.header.get_extension(TWCC_EXT)?;
    Some(u16::from_be_bytes([*v.first()?, *v.get(1)?]))
}

/// A VP8 packet: descriptor with a 15-bit picture id and TL0PICIDX; the first packet of a
/// frame carries the VP8 header (and a key frame's size).
fn vp8_payload(pid: u16, tl0: u8, first: bool, key: bool, layer: usize, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    b.put_u8(if first { 0x90 } else { 0x80 });
    b.put_u8(0xc0);
    b.put_u16(0x8000 | pid);
    b.put_u8(tl0);
    if first {
        b.put_u8(if key { 0x00 } else { 0x01 });
        b.put_slice(&[0x00, 0x00, 0x9d, 0x01, 0x2a]);
        let (w, h) = [(320u16, 180u16), (640, 360), (1280, 720)][layer];
        b.put_u16_le(w);
        b.put_u16_le(h);
    }
    b.resize(len, layer as u8);
    b.freeze()
}
