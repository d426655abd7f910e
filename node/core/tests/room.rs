//! Deterministic tests of the forwarding rules at the room level: virtual time, no I/O.

use bytes::Bytes;
use sfu_core::{
    Codec, MediaKind, Output, Packet, Room, RoomConfig, SinkId, SubscriptionId, SubscriptionParams,
    TrackId, TrackInfo, WallClock,
};
use std::time::{Duration, Instant};

const VIDEO: TrackId = TrackId(0x51d);
const AUDIO: TrackId = TrackId(0xa0d10);

struct Harness {
    room: Room,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let room = Room::new(
            WallClock::new(now, Duration::from_secs(1_700_000_000)),
            RoomConfig::default(),
        );
        Self { room, now }
    }

    fn add_video(&mut self, id: TrackId, layers: usize) {
        self.room
            .add_track(
                self.now,
                TrackInfo::new(id, MediaKind::Video, Codec::Vp8, 90_000, layers),
            )
            .unwrap();
    }

    fn subscribe(&mut self, track: TrackId, sink: u64, max_layer: usize) -> SubscriptionId {
        self.room
            .subscribe(
                self.now,
                track,
                SinkId(sink),
                SubscriptionParams {
                    ssrc: 1000 + sink as u32,
                    payload_type: 96,
                    max_layer,
                    rtx: None,
                    red_payload_type: None,
                },
            )
            .unwrap()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        while let Some(t) = self.room.poll_timeout() {
            if t > self.now {
                break;
            }
            self.room.handle_timeout(self.now);
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.room.poll_output()).collect()
    }
}

/// A VP8 packet; `key` makes it the start of a key frame.
fn vp8(ssrc: u32, seq: u16, ts: u32, key: bool) -> Packet {
    let mut p = Packet {
        payload: Bytes::from(vec![0x10, if key { 0x00 } else { 0x01 }, 0xaa, 0xbb]),
        ..Default::default()
    };
    p.header.ssrc = ssrc;
    p.header.sequence_number = seq;
    p.header.timestamp = ts;
    p.header.payload_type = 120;
    p
}

fn rtp_outputs(outputs: &[Output]) -> Vec<(SinkId, Packet)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Rtp {
                sink,
                packet,
                edits,
                ..
            } => Some((*sink, edits.applied(packet))),
            _ => None,
        })
        .collect()
}

fn keyframe_requests(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::KeyframeRequest { .. }))
        .count()
}

#[test]
fn fan_out_shares_the_payload_and_rewrites_each_header() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    for sink in 0..100 {
        h.subscribe(VIDEO, sink, 0);
    }
    h.drain();
    let packet = vp8(7, 500, 9000, true);
    let payload_ptr = packet.payload.as_ptr();
    h.room.handle_rtp(h.now, VIDEO, 0, packet);
    let out = h.drain();
    let rtp = rtp_outputs(&out);
    assert_eq!(rtp.len(), 100);
    for (sink, p) in rtp {
        assert_eq!(
            p.payload.as_ptr(),
            payload_ptr,
            "payload must be shared, not copied"
        );
        assert_eq!(p.header.ssrc, 1000 + sink.0 as u32);
        assert_eq!(p.header.payload_type, 96);
        assert!(p.header.extensions.is_empty());
    }
    assert_eq!(h.room.stats().packets_out, 100);
}

#[test]
fn keyframe_requests_are_coalesced_per_layer() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    h.subscribe(VIDEO, 1, 0);
    let out = h.drain();
    assert_eq!(
        keyframe_requests(&out),
        1,
        "a new subscriber gets a keyframe request at once"
    );

    // 50 more subscribers join and 50 subscribers send PLIs within 100 ms.
    let mut subs = Vec::new();
    for sink in 2..52 {
        subs.push(h.subscribe(VIDEO, sink, 0));
    }
    for s in &subs {
        h.room.handle_keyframe_request(h.now, *s);
    }
    h.advance(Duration::from_millis(100));
    assert_eq!(
        keyframe_requests(&h.drain()),
        0,
        "held inside the 500 ms window"
    );

    // When the window ends exactly one request goes out for all of them.
    h.advance(Duration::from_millis(450));
    assert_eq!(keyframe_requests(&h.drain()), 1);
    h.advance(Duration::from_millis(1100));
    assert_eq!(
        h.drain()
            .iter()
            .filter(|o| matches!(o, Output::KeyframeRequest { .. }))
            .count(),
        1,
        "subscribers still waiting for a keyframe retry, still coalesced"
    );

    // Once a keyframe arrived nobody waits, and no more requests go out.
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(7, 1, 0, true));
    h.drain();
    h.advance(Duration::from_secs(3));
    assert_eq!(keyframe_requests(&h.drain()), 0);
}

#[test]
fn a_keyframe_arriving_cancels_a_held_request() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    let a = h.subscribe(VIDEO, 1, 0);
    h.drain();
    h.room.handle_keyframe_request(h.now, a);
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(7, 1, 0, true));
    h.drain();
    h.advance(Duration::from_millis(600));
    assert_eq!(keyframe_requests(&h.drain()), 0);
}

#[test]
fn nacks_are_answered_from_the_cache_with_the_subscribers_numbering() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    let sub = h.subscribe(VIDEO, 1, 0);
    h.drain();
    let mut sent = Vec::new();
    for i in 0..20u16 {
        h.room
            .handle_rtp(h.now, VIDEO, 0, vp8(7, 60_000 + i, 3000 * i as u32, i == 0));
        for (_, p) in rtp_outputs(&h.drain()) {
            sent.push(p.clone());
        }
    }
    assert_eq!(sent.len(), 20);
    let lost = [
        sent[3].header.sequence_number,
        sent[17].header.sequence_number,
    ];
    h.room.handle_nack(h.now, sub, &lost);
    let out = h.drain();
    let resent = rtp_outputs(&out);
    assert_eq!(resent.len(), 2);
    assert_eq!(resent[0].1, sent[3]);
    assert_eq!(resent[1].1, sent[17]);
    assert_eq!(h.room.stats().retransmitted, 2);

    // Asked again at once (a browser re-NACKs every round trip): the copies may still be on
    // their way, so nothing more is sent until the resend interval has passed.
    h.room.handle_nack(h.now, sub, &lost);
    assert!(rtp_outputs(&h.drain()).is_empty());
    assert_eq!(h.room.stats().nack_repeats, 2);
    h.advance(Duration::from_millis(100));
    h.drain();
    h.room.handle_nack(h.now, sub, &lost);
    assert_eq!(rtp_outputs(&h.drain()).len(), 2);
    assert_eq!(h.room.stats().retransmitted, 4);

    // A sequence number never sent is a miss, and nothing is sent.
    h.room.handle_nack(
        h.now,
        sub,
        &[sent[19].header.sequence_number.wrapping_add(5)],
    );
    assert!(rtp_outputs(&h.drain()).is_empty());
    assert_eq!(h.room.stats().nack_misses, 1);

    // Too old to be useful.
    h.advance(Duration::from_secs(3));
    h.drain();
    h.room.handle_nack(h.now, sub, &lost[..1]);
    assert!(rtp_outputs(&h.drain()).is_empty());
}

#[test]
fn sender_reports_follow_the_publishers_clock_in_the_subscribers_timestamps() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    let _ = h.subscribe(VIDEO, 1, 0);
    h.drain();
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(7, 1, 90_000, true));
    let first = rtp_outputs(&h.drain())[0].1.header.timestamp;
    let publisher_ntp = 0x1234_5678_0000_0000;
    h.room
        .handle_sender_report(h.now, VIDEO, 0, publisher_ntp, 90_000);

    let mut reports = Vec::new();
    for _ in 0..30 {
        h.advance(Duration::from_millis(100));
        for o in h.drain() {
            if let Output::SenderReport { report, sink, .. } = o {
                assert_eq!(sink, SinkId(1));
                reports.push((h.now, report));
            }
        }
    }
    assert!(
        (2..=4).contains(&reports.len()),
        "about one report per second, got {}",
        reports.len()
    );
    let (at, r) = reports[0];
    assert_eq!(r.ssrc, 1001);
    assert_eq!(r.packet_count, 1);
    assert_eq!(r.octet_count, 4);
    // The publisher's mapping (ntp ↔ 90000) carried into the subscriber's timestamp space
    // (90000 ↦ `first`) and advanced by the time since the report.
    let elapsed = at - (h.now - Duration::from_millis(3000));
    let ticks = (elapsed.as_millis() as u32) * 90;
    assert_eq!(r.rtp_time, first.wrapping_add(ticks));
    assert!(r.ntp > publisher_ntp);
}

#[test]
fn a_subscription_moved_to_another_track_stays_continuous() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    let other = TrackId(42);
    h.add_video(other, 1);
    let sub = h.subscribe(VIDEO, 1, 0);
    for i in 0..5u16 {
        h.room
            .handle_rtp(h.now, VIDEO, 0, vp8(7, 100 + i, 3000 * i as u32, i == 0));
    }
    let before = h.drain();
    let last = rtp_outputs(&before).last().unwrap().1.clone();

    h.room.move_subscription(h.now, sub, other).unwrap();
    assert_eq!(
        keyframe_requests(&h.drain()),
        1,
        "the new source is asked for a keyframe"
    );
    h.now += Duration::from_millis(40);
    // The old track keeps sending; the subscription no longer hears it.
    h.room
        .handle_rtp(h.now, VIDEO, 0, vp8(7, 105, 15_000, false));
    assert!(rtp_outputs(&h.drain()).is_empty());
    h.room
        .handle_rtp(h.now, other, 0, vp8(9, 31_000, 777, false));
    assert!(
        rtp_outputs(&h.drain()).is_empty(),
        "waits for the new track's keyframe"
    );
    h.room
        .handle_rtp(h.now, other, 0, vp8(9, 31_001, 777, true));
    let out = h.drain();
    let first = rtp_outputs(&out)[0].1.clone();
    assert_eq!(first.header.ssrc, last.header.ssrc);
    assert_eq!(
        first.header.sequence_number,
        last.header.sequence_number.wrapping_add(1)
    );
    assert_eq!(
        first.header.timestamp.wrapping_sub(last.header.timestamp),
        40 * 90
    );
}

#[test]
fn a_simulcast_subscriber_gets_one_layer_and_falls_back_when_it_stops() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 3);
    let ssrcs = [11u32, 12, 13];
    let mut seqs = [0u16, 1000, 2000];
    let mut send = |h: &mut Harness, layers: &[usize], key: bool| {
        for &l in layers {
            seqs[l] = seqs[l].wrapping_add(1);
            h.room
                .handle_rtp(h.now, VIDEO, l, vp8(ssrcs[l], seqs[l], 0, key));
        }
    };
    send(&mut h, &[0, 1, 2], true);
    h.drain();
    h.subscribe(VIDEO, 1, 2);
    h.drain();
    send(&mut h, &[0, 1, 2], true);
    let out = h.drain();
    assert_eq!(rtp_outputs(&out).len(), 1, "exactly one layer is forwarded");
    let mut last_seq = rtp_outputs(&out)[0].1.header.sequence_number;

    // The top layer stops (the publisher dropped it); after the timeout the subscriber moves
    // down to layer 1 at its next keyframe, without a sequence gap.
    for _ in 0..40 {
        h.advance(Duration::from_millis(50));
        send(&mut h, &[0, 1], false);
        let out = h.drain();
        assert!(
            rtp_outputs(&out).is_empty(),
            "no layer-1 delta frames before the switch"
        );
    }
    send(&mut h, &[0, 1], true);
    let out = h.drain();
    let rtp = rtp_outputs(&out);
    assert_eq!(rtp.len(), 1);
    assert_eq!(rtp[0].1.header.sequence_number, last_seq.wrapping_add(1));
    last_seq = rtp[0].1.header.sequence_number;
    send(&mut h, &[0, 1], false);
    let out = h.drain();
    assert_eq!(
        rtp_outputs(&out)[0].1.header.sequence_number,
        last_seq.wrapping_add(1)
    );
}

#[test]
fn removing_a_track_ends_its_subscriptions_and_unknown_input_is_counted() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    h.room
        .add_track(
            h.now,
            TrackInfo::new(AUDIO, MediaKind::Audio, Codec::Opus, 48_000, 1),
        )
        .unwrap();
    let a = h.subscribe(VIDEO, 1, 0);
    let b = h.subscribe(AUDIO, 1, 0);
    h.drain();
    assert_eq!(h.room.remove_track(VIDEO), vec![(a, SinkId(1))]);
    assert_eq!(h.room.unsubscribe(a), None);
    assert_eq!(h.room.unsubscribe(b), Some(SinkId(1)));
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(1, 1, 1, true));
    h.room.handle_rtp(h.now, AUDIO, 3, vp8(1, 1, 1, true));
    assert_eq!(h.room.stats().dropped_unknown, 2);
    h.room.handle_nack(h.now, a, &[1, 2]);
    h.room.handle_keyframe_request(h.now, a);
    assert!(h.drain().is_empty());
}

#[test]
fn wanted_layers_are_the_targets_or_everything_up_to_the_maximum_while_none_flows() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 3);
    h.subscribe(VIDEO, 1, 1);
    assert_eq!(
        h.room.wanted_layers(h.now, VIDEO),
        vec![0, 1],
        "nothing flows yet"
    );
    h.room.handle_rtp(h.now, VIDEO, 1, vp8(12, 1, 0, true));
    assert_eq!(
        h.room.wanted_layers(h.now, VIDEO),
        vec![1],
        "the target flows"
    );
    h.subscribe(VIDEO, 2, 0);
    assert_eq!(
        h.room.wanted_layers(h.now, VIDEO),
        vec![1],
        "layer 1 is all that flows, so the second subscriber gets it too"
    );
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(11, 1, 0, true));
    h.advance(Duration::from_millis(60));
    assert_eq!(h.room.wanted_layers(h.now, VIDEO), vec![0, 1]);
    assert!(h.room.wanted_layers(h.now, TrackId(999)).is_empty());
}

#[test]
fn a_muted_track_forwards_nothing_and_asks_for_a_keyframe_when_unmuted() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    h.subscribe(VIDEO, 1, 0);
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(7, 1, 0, true));
    h.drain();
    h.room.set_track_muted(h.now, VIDEO, true).unwrap();
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(7, 2, 0, false));
    assert!(rtp_outputs(&h.drain()).is_empty());
    assert_eq!(h.room.stats().dropped_muted, 1);
    h.now += Duration::from_secs(1);
    h.room.set_track_muted(h.now, VIDEO, false).unwrap();
    assert_eq!(keyframe_requests(&h.drain()), 1);
    h.room.handle_rtp(h.now, VIDEO, 0, vp8(7, 3, 0, false));
    assert_eq!(rtp_outputs(&h.drain()).len(), 1);
    assert!(h.room.set_track_muted(h.now, TrackId(99), true).is_err());
}

#[test]
fn red_goes_as_it_is_to_red_subscribers_and_as_its_primary_block_to_others() {
    let mut h = Harness::new();
    let mut info = TrackInfo::new(AUDIO, MediaKind::Audio, Codec::Opus, 48_000, 1);
    info.red_payload_type = Some(63);
    h.room.add_track(h.now, info).unwrap();
    let params = |sink: u32, red| SubscriptionParams {
        ssrc: 100 + sink,
        payload_type: 111,
        max_layer: 0,
        rtx: None,
        red_payload_type: red,
    };
    let with_red = h
        .room
        .subscribe(h.now, AUDIO, SinkId(1), params(1, Some(98)))
        .unwrap();
    let without = h
        .room
        .subscribe(h.now, AUDIO, SinkId(2), params(2, None))
        .unwrap();
    h.drain();
    // A RED packet: one redundant block of 2 bytes, then the primary (Opus, pt 111).
    let mut p = Packet {
        payload: Bytes::from_static(&[0xef, 0x0f, 0x00, 0x02, 0x6f, 1, 2, 0xfc, 0xaa]),
        ..Default::default()
    };
    p.header.payload_type = 63;
    p.header.sequence_number = 1;
    h.room.handle_rtp(h.now, AUDIO, 0, p.clone());
    let mut got = std::collections::HashMap::new();
    for o in h.drain() {
        if let Output::Rtp {
            subscription,
            packet,
            edits,
            ..
        } = o
        {
            let packet = edits.applied(&packet);
            got.insert(subscription, (packet.header.payload_type, packet.payload));
        }
    }
    assert_eq!(
        got[&with_red].0, 98,
        "RED keeps RED, in the subscriber's payload type"
    );
    assert_eq!(got[&with_red].1, p.payload);
    assert_eq!(got[&without].0, 111, "the primary block is plain Opus");
    assert_eq!(&got[&without].1[..], &[0xfc, 0xaa]);
    // A malformed RED payload reaches only RED subscribers.
    p.payload = Bytes::from_static(&[0xef, 0x0f, 0x00, 0x09, 0x6f]);
    p.header.sequence_number = 2;
    h.room.handle_rtp(h.now, AUDIO, 0, p);
    let subs: Vec<SubscriptionId> = h
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Rtp { subscription, .. } => Some(subscription),
            _ => None,
        })
        .collect();
    assert_eq!(subs, vec![with_red]);
    assert_eq!(h.room.stats().dropped_malformed, 1);
}

/// A NACK flood (a subscriber without congestion feedback naming the whole cache, a hundred
/// times a second) gets what the default budget allows, not the cache a hundred times over.
#[test]
fn a_nack_flood_stays_inside_the_retransmission_budget() {
    let mut h = Harness::new();
    h.add_video(VIDEO, 1);
    // As the node declares every subscriber: here one that negotiated no congestion feedback.
    h.room.set_sink(SinkId(1), sfu_core::SinkParams::default());
    let sub = h.subscribe(VIDEO, 1, 0);
    h.drain();
    let mut sent = Vec::new();
    for i in 0..500u16 {
        let mut p = vp8(7, i, 3000 * i as u32, i == 0);
        p.payload = Bytes::from(vec![0x10; 1_000]);
        h.room.handle_rtp(h.now, VIDEO, 0, p);
        sent.extend(rtp_outputs(&h.drain()).into_iter().map(|(_, p)| p));
    }
    assert_eq!(sent.len(), 500);
    let all: Vec<u16> = sent.iter().map(|p| p.header.sequence_number).collect();
    let mut resent_bytes = 0usize;
    for _ in 0..100 {
        h.room.handle_nack(h.now, sub, &all);
        resent_bytes += rtp_outputs(&h.drain())
            .iter()
            .map(|(_, p)| p.payload.len())
            .sum::<usize>();
        h.advance(Duration::from_millis(10));
    }
    // 1 s at 20 % of the default 2 Mbps estimate (50,000 bytes/s) plus its 12,500-byte burst;
    // answering everything would have been 50 MB.
    assert!(
        resent_bytes <= 63_000,
        "{resent_bytes} bytes resent for 100 NACKs of 500 packets"
    );
    assert!(resent_bytes > 0, "some repair still goes");
    assert!(h.room.stats().nack_over_budget > 0);
}

#[test]
fn a_relay_sink_attached_before_its_track_is_known_is_fed_once_the_track_is_added() {
    let mut h = Harness::new();
    let (early, dropped) = (SinkId(1 << 63 | 7), SinkId(1 << 63 | 8));
    let sub = h.room.subscribe_relay(h.now, AUDIO, 0, early).unwrap();
    let other = h.room.subscribe_relay(h.now, AUDIO, 0, dropped).unwrap();
    assert_eq!(h.room.unsubscribe(other), Some(dropped));
    h.room
        .add_track(
            h.now,
            TrackInfo::new(AUDIO, MediaKind::Audio, Codec::Opus, 48_000, 1),
        )
        .unwrap();
    h.drain();
    let mut packet = vp8(9, 100, 960, false);
    packet.header.payload_type = 111;
    h.room.handle_rtp(h.now, AUDIO, 0, packet);
    let relayed: Vec<SinkId> = h
        .drain()
        .iter()
        .filter_map(|o| match o {
            Output::Relay { sink, .. } => Some(*sink),
            _ => None,
        })
        .collect();
    assert_eq!(
        relayed,
        [early],
        "the waiting sink is fed, the dropped one not"
    );
    assert_eq!(h.room.unsubscribe(sub), Some(early));
    // A layer the track turns out not to have is refused then, as at once.
    let sub = h.room.subscribe_relay(h.now, VIDEO, 2, dropped).unwrap();
    h.add_video(VIDEO, 1);
    assert_eq!(h.room.unsubscribe(sub), None);
}
