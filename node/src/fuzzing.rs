//! Fuzz target bodies: one function per parser of network input, each of which must return
//! (not panic, not hang) on any input.
//!
//! They live in the library so that the cargo-fuzz targets of `fuzz/` (nightly, libFuzzer) and
//! the corpus replay test `node/tests/fuzz_corpus.rs` (stable, in CI) run the same code. See
//! `fuzz/README.md` for how to run them.

use bytes::{Bytes, BytesMut};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::{Marshal, Unmarshal};
use sfu_core::{
    Codec, MediaKind, Output, Packet, Room, RoomConfig, RtxParams, SinkId, SinkParams,
    SubscriptionId, SubscriptionParams, SubscriptionSettings, TrackId, TrackInfo, WallClock,
};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// The names of the targets, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("stun", stun),
    ("rtp_room", rtp_room),
    ("vp8", vp8),
    ("red", red),
    ("relay_wire", relay_wire),
    ("relay_direct", relay_direct),
    ("signaling", signaling),
    ("whip_patch", whip_patch),
    ("records", records),
];

/// The ICE credentials the `stun` target checks against (its seeds are signed with them).
pub const STUN_UFRAG: &str = "fuzzufrag";
/// See [`STUN_UFRAG`].
pub const STUN_PWD: &str = "fuzz-password-of-24-chars";

fn crypto() -> &'static Arc<dyn rtc::crypto::RTCCryptoProvider> {
    static PROVIDER: OnceLock<Arc<dyn rtc::crypto::RTCCryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| rtc::crypto::default_provider().expect("a crypto provider"))
}

/// A datagram on a worker's shared socket: RFC 7983 demultiplexing, the USERNAME lookup that
/// finds its peer, and the authenticated answer to a binding request.
pub fn stun(data: &[u8]) {
    use crate::media::demux::{classify, stun_local_ufrag};
    use crate::media::transport::stun::{answer, verify};
    let _ = classify(data);
    let ufrag = stun_local_ufrag(data);
    let crypto = crypto().crypto();
    let from: SocketAddr = SocketAddr::from(([192, 0, 2, 7], 5000));
    let _ = verify(data, STUN_UFRAG, STUN_PWD, crypto);
    let _ = answer(data, from, STUN_UFRAG, STUN_PWD, crypto);
    // As the demultiplexer does: whatever the message names as our ufrag.
    if let Some(ufrag) = ufrag {
        let _ = answer(data, from, ufrag, STUN_PWD, crypto);
    }
}

const VIDEO: TrackId = TrackId(0x71de0);
const AUDIO: TrackId = TrackId(0xa0d10);
/// A subscriber with TWCC, one with REMB, and a relay link.
const SINK_TWCC: SinkId = SinkId(1);
const SINK_REMB: SinkId = SinkId(2);
const SINK_RELAY: SinkId = SinkId(3);

struct Subs {
    /// (sink, SSRC the subscriber knows the subscription by, subscription).
    local: Vec<(SinkId, u32, SubscriptionId)>,
    relay: SubscriptionId,
}

fn fuzz_room(now: Instant) -> (Room, Subs) {
    let mut room = Room::new(
        WallClock::new(now, Duration::from_secs(1_700_000_000)),
        RoomConfig {
            // Small, so that the input wraps it around (and each run sets up quickly).
            cache_size: 64,
            ..RoomConfig::default()
        },
    );
    let mut video = TrackInfo::new(VIDEO, MediaKind::Video, Codec::Vp8, 90_000, 3);
    video.participant = "publisher".into();
    let mut audio = TrackInfo::new(AUDIO, MediaKind::Audio, Codec::Opus, 48_000, 1);
    audio.participant = "publisher".into();
    audio.audio_level_ext = Some(1);
    audio.audio_levels = true;
    audio.red_payload_type = Some(63);
    room.add_track(now, video).expect("new track");
    room.add_track(now, audio).expect("new track");
    room.set_sink(
        SINK_TWCC,
        SinkParams {
            twcc_ext: Some(5),
            remb: false,
        },
    );
    room.set_sink(
        SINK_REMB,
        SinkParams {
            twcc_ext: None,
            remb: true,
        },
    );
    let params = |ssrc, payload_type, max_layer, rtx: Option<u32>, red| SubscriptionParams {
        ssrc,
        payload_type,
        max_layer,
        rtx: rtx.map(|ssrc| RtxParams {
            ssrc,
            payload_type: 97,
        }),
        red_payload_type: red,
    };
    let mut local = Vec::new();
    for (sink, track, p) in [
        (SINK_TWCC, VIDEO, params(1, 96, 2, Some(3), None)),
        (SINK_TWCC, AUDIO, params(2, 111, 0, None, None)),
        (SINK_REMB, VIDEO, params(11, 96, 1, None, None)),
        (SINK_REMB, AUDIO, params(12, 111, 0, None, Some(63))),
    ] {
        let ssrc = p.ssrc;
        let id = room.subscribe(now, track, sink, p).expect("subscribe");
        local.push((sink, ssrc, id));
    }
    let relay = room
        .subscribe_relay(now, VIDEO, 0, SINK_RELAY)
        .expect("relay subscription");
    (room, Subs { local, relay })
}

/// Drains the room's outputs as the node does: forwarded packets are written with their edits.
fn drain(room: &mut Room) {
    while let Some(output) = room.poll_output() {
        match output {
            Output::Rtp { packet, edits, .. } => {
                let _ = edits.applied(&packet).marshal();
            }
            Output::Relay { packet, .. } => {
                let _ = packet.marshal();
            }
            _ => {}
        }
    }
}

fn run_timers(room: &mut Room, now: Instant) {
    // Bounded: a timer that does not move forward must not hang the target.
    for _ in 0..64 {
        match room.poll_timeout() {
            Some(t) if t <= now => room.handle_timeout(now),
            _ => break,
        }
        drain(room);
    }
}

/// Compound RTCP from a subscriber on `sink`, routed to the core as the node's media worker does
/// (`room/drive.rs`): PLI/FIR, NACK, TWCC, REMB. Unknown SSRCs fall back to one of the sink's
/// subscriptions so that feedback reaches the core more often.
fn subscriber_rtcp(room: &mut Room, now: Instant, subs: &Subs, sink: SinkId, chunk: &[u8]) {
    let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut Bytes::copy_from_slice(chunk)) else {
        return;
    };
    let mine: Vec<(u32, SubscriptionId)> = subs
        .local
        .iter()
        .filter(|(s, _, _)| *s == sink)
        .map(|(_, ssrc, id)| (*ssrc, *id))
        .collect();
    let subscription = |ssrc: u32| {
        mine.iter()
            .find(|(s, _)| *s == ssrc)
            .or_else(|| mine.get(ssrc as usize % mine.len()))
            .map(|(_, id)| *id)
    };
    let mut keyframes = Vec::new();
    let mut nacks = Vec::new();
    for p in &packets {
        let _ = p.marshal();
        let any = p.as_any();
        if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
            keyframes.extend(subscription(pli.media_ssrc));
        } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
            keyframes.extend(fir.fir.iter().filter_map(|e| subscription(e.ssrc)));
        } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>()
            && let Some(sub) = subscription(nack.media_ssrc)
        {
            let lost: Vec<u16> = nack.nacks.iter().flat_map(|n| n.packet_list()).collect();
            nacks.push((sub, lost));
        } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
            room.handle_transport_feedback(now, sink, cc);
        } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
            room.handle_remb(now, sink, remb.bitrate as f64);
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            // As from the publisher.
            let layer = sr.ssrc as usize % 3;
            room.handle_sender_report(now, VIDEO, layer, sr.ntp_time, sr.rtp_time);
            room.handle_sender_report(now, AUDIO, 0, sr.ntp_time, sr.rtp_time);
        }
    }
    for sub in keyframes {
        room.handle_keyframe_request(now, sub);
    }
    for (sub, lost) in nacks {
        room.handle_nack(now, sub, &lost);
        // A relay link's NACK names source sequence numbers.
        room.handle_relay_nack(now, subs.relay, &lost);
    }
    drain(room);
}

/// What subscribers and the relay say about subscriptions (from signaling, not packets, but
/// driven by the input so that layer switches interleave with media).
fn control(room: &mut Room, now: Instant, subs: &Subs, chunk: &[u8]) {
    let [a, b, ..] = *chunk else { return };
    let (_, _, id) = subs.local[a as usize % subs.local.len()];
    match b % 5 {
        0 => {
            let max = (b >> 3) as usize % 4;
            let _ = room.set_max_layer(now, id, (max < 3).then_some(max));
        }
        1 => {
            let _ = room.update_subscription(
                now,
                id,
                SubscriptionSettings {
                    max_layer: Some((b >> 3) as usize % 3),
                    pinned: b & 0x80 != 0,
                },
            );
        }
        2 => {
            let track = if a & 1 == 0 { VIDEO } else { AUDIO };
            let _ = room.set_track_muted(now, track, b & 0x80 != 0);
        }
        3 => room.handle_relay_keyframe_request(now, VIDEO, (b >> 3) as usize % 5),
        _ => {
            let _ = room.wanted_layers(now, VIDEO);
            let _ = room.active_speakers();
        }
    }
    drain(room);
}

/// RTP from a publisher and RTCP from subscribers into a forwarding core room (a VP8 track of
/// three simulcast layers, an Opus track with RED and audio levels, two subscribers and a
/// relay link), with time advancing as the input says.
///
/// The input is a sequence of records: one byte of operation and time step, two bytes of
/// length, then that many bytes (fewer at the end of the input).
pub fn rtp_room(data: &[u8]) {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    let mut now = base;
    let (mut room, subs) = fuzz_room(now);
    drain(&mut room);
    let mut rest = data;
    while let [op, l0, l1, tail @ ..] = rest {
        let len = (u16::from_be_bytes([*l0, *l1]) as usize).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        // Time steps of 0 to 155 ms.
        now += Duration::from_millis((op >> 3) as u64 * 5);
        run_timers(&mut room, now);
        match op & 0x07 {
            layer @ 0..=3 => {
                let Ok(packet) = Packet::unmarshal(&mut &chunk[..]) else {
                    continue;
                };
                if layer == 3 {
                    room.handle_rtp(now, AUDIO, 0, packet);
                } else {
                    room.handle_rtp(now, VIDEO, layer as usize, packet);
                }
                drain(&mut room);
            }
            4 => subscriber_rtcp(&mut room, now, &subs, SINK_TWCC, chunk),
            5 => subscriber_rtcp(&mut room, now, &subs, SINK_REMB, chunk),
            6 => control(&mut room, now, &subs, chunk),
            _ => {
                // A whole packet from the publisher: RTP into the layer its SSRC names.
                let Ok(packet) = Packet::unmarshal(&mut &chunk[..]) else {
                    continue;
                };
                let layer = packet.header.ssrc as usize % 4;
                room.handle_rtp(now, VIDEO, layer, packet);
                drain(&mut room);
            }
        }
    }
    // Let every timer of the room run once more.
    now += Duration::from_secs(3);
    run_timers(&mut room, now);
    drain(&mut room);
}

/// The VP8 payload descriptor (`sfu_core::vp8`): parse, keyframe detection, the numbering
/// rewrite and its in-place edit; and the keyframe detection of every codec.
pub fn vp8(data: &[u8]) {
    use sfu_core::vp8::{Vp8Descriptor, Vp8Numbering};
    for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::Av1] {
        let _ = codec.is_keyframe(MediaKind::Video, data);
    }
    let Some(d) = Vp8Descriptor::parse(data) else {
        return;
    };
    let _ = d.keyframe_size(data);
    let payload = Bytes::copy_from_slice(data);
    let rewritten = d.rewrite(&payload, 0x7abc, 0x5a);
    assert_eq!(rewritten.len(), payload.len(), "a rewrite keeps the length");
    if d.has_numbering() {
        // The rewritten descriptor parses to the same layout.
        let again = Vp8Descriptor::parse(&rewritten).expect("a rewritten descriptor parses");
        assert_eq!(again.payload_offset, d.payload_offset);
    }
    let mut numbering = Vp8Numbering::default();
    let _ = numbering.map(&d);
    numbering.on_switch();
    if let Some(d2) = data.get(1..).and_then(Vp8Descriptor::parse) {
        if let Some((pid, tl0)) = numbering.map(&d2) {
            let mut b = BytesMut::from(payload.as_ref());
            d.edit(pid, tl0).apply(&mut b);
        }
        let _ = Vp8Numbering::map_with(&d2, numbering.offsets());
    }
}

/// RED (RFC 2198): the primary block of a redundant audio payload.
pub fn red(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    if let Some((pt, primary)) = sfu_core::red::primary(&payload) {
        assert!(pt < 0x80);
        assert!(primary.len() < payload.len(), "the primary block is a tail");
        assert_eq!(&payload[payload.len() - primary.len()..], &primary[..]);
    }
}

/// The relay link: control frames off a stream, and media datagrams' records (whose RTP the
/// receiving node unmarshals).
pub fn relay_wire(data: &[u8]) {
    use sfu_relay::wire::{MAX_FRAME, decode_frame, records};
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode_frame(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < before, "a frame consumes input"),
            Ok(None) | Err(_) => break,
        }
        assert!(before - buf.len() <= MAX_FRAME + 10);
    }
    for record in records(Bytes::copy_from_slice(data)) {
        let Ok((_flow, rtp)) = record else { break };
        let _ = Packet::unmarshal(&mut rtp.clone());
    }
}

/// The key the `relay_direct` target opens with (its seeds are sealed with it).
pub const DIRECT_KEY: [u8; sfu_relay::direct::KEY_LEN] = *b"fuzz-direct-key!";

/// A datagram on a worker's socket that starts like a relay link's direct datagram: the
/// channel looked up, opened (seeds sealed with [`DIRECT_KEY`] get past authentication, so
/// the replay window and the records behind it are reached), its records parsed.
pub fn relay_direct(data: &[u8]) {
    use sfu_relay::direct::{Opener, channel_of};
    let _ = channel_of(data);
    let mut opener = Opener::new(&DIRECT_KEY);
    for _ in 0..2 {
        let mut buf = data.to_vec();
        let Ok((_worker, plain)) = opener.open(&mut buf) else {
            return;
        };
        for record in sfu_relay::wire::records(Bytes::copy_from_slice(plain)) {
            let Ok((_flow, rtp)) = record else { break };
            let _ = Packet::unmarshal(&mut rtp.clone());
        }
    }
}

/// What a signaling client sends: WebSocket messages (JSON) and its access token.
pub fn signaling(data: &[u8]) {
    use crate::signaling::protocol::ClientMessage;
    let _ = serde_json::from_slice::<ClientMessage>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<ClientMessage>(text);
        static AUTH: OnceLock<crate::auth::Authenticator> = OnceLock::new();
        let auth = AUTH.get_or_init(|| {
            let (key, secret) = ("fuzzkey".to_owned(), "fuzz-secret".to_owned());
            crate::auth::Authenticator::new([(&key, &secret)])
        });
        let _ = auth.verify(text.trim());
    }
}

/// A WHIP/WHEP PATCH body (a trickle-ICE SDP fragment) and the candidates it carries, parsed
/// as the peer connection parses them.
pub fn whip_patch(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (_ufrag, candidates) = crate::http::whip::trickle_fragment(text);
    for (candidate, _mid) in candidates {
        let _ = rtc::ice::candidate::unmarshal_candidate(&candidate);
        if let Some(c) = candidate.strip_prefix("candidate:") {
            let _ = rtc::ice::candidate::unmarshal_candidate(c);
        }
    }
}

/// Registry records as a node reads them from etcd: the key, then the value as each record
/// type.
pub fn records(data: &[u8]) {
    use sfu_control::records as r;
    let _ = serde_json::from_slice::<r::NodeRecord>(data);
    let _ = serde_json::from_slice::<r::RoomNodeRecord>(data);
    let _ = serde_json::from_slice::<r::ParticipantRecord>(data);
    let _ = serde_json::from_slice::<r::AudienceRecord>(data);
    let _ = serde_json::from_slice::<r::HandRecord>(data);
    let _ = serde_json::from_slice::<r::ReservationRecord>(data);
    let _ = serde_json::from_slice::<r::TrackRecord>(data);
    let _ = serde_json::from_slice::<r::RoomConfig>(data);
    if let Ok(key) = std::str::from_utf8(data) {
        let _ = r::Keys::new("fuzz").parse(key);
        let _ = r::node_of(key);
    }
}
