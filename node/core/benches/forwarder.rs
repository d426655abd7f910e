//! Throughput of the forwarding core: one forwarder, and one packet fanned out to 100
//! subscriptions through a room (rewrite, output queue, retransmission cache).

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sfu_core::{
    Codec, Forwarder, ForwarderConfig, MediaKind, Output, Packet, Room, RoomConfig, SinkId,
    SinkParams, SubscriptionParams, TrackId, TrackInfo, WallClock,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn packet(seq: u16, key: bool) -> Packet {
    let mut payload = vec![0u8; 1100];
    payload[0] = 0x10;
    payload[1] = if key { 0x00 } else { 0x01 };
    let mut p = Packet {
        payload: Bytes::from(payload),
        ..Default::default()
    };
    p.header.ssrc = 42;
    p.header.sequence_number = seq;
    p.header.timestamp = seq as u32 * 3000;
    p.header.payload_type = 96;
    p
}

fn forwarder(c: &mut Criterion) {
    let now = Instant::now();
    let mut f = Forwarder::new(
        ForwarderConfig {
            kind: MediaKind::Video,
            ssrc: 7,
            payload_type: 100,
            clock_rate: 90_000,
        },
        Some(0),
    );
    let p = packet(0, true);
    f.forward(now, 0, &p.header, p.payload.len(), true).unwrap();
    let mut header = p.header.clone();
    let mut g = c.benchmark_group("forwarder");
    g.throughput(Throughput::Elements(1));
    g.bench_function("forward_one_packet", |b| {
        b.iter(|| {
            header.sequence_number = header.sequence_number.wrapping_add(1);
            black_box(f.forward(now, 0, black_box(&header), 1100, false).unwrap());
        })
    });
    g.finish();
}

/// One packet into a room with 100 subscriptions; `congestion_control`: each subscriber
/// negotiated TWCC, so every packet is numbered and recorded for its bandwidth estimate.
fn fan_out_bench(c: &mut Criterion, name: &str, congestion_control: bool) {
    const SUBSCRIBERS: u64 = 100;
    let now = Instant::now();
    let mut room = Room::new(WallClock::new(now, Duration::ZERO), RoomConfig::default());
    let track = TrackId(1);
    room.add_track(
        now,
        TrackInfo::new(track, MediaKind::Video, Codec::Vp8, 90_000, 1),
    )
    .unwrap();
    for s in 0..SUBSCRIBERS {
        if congestion_control {
            room.set_sink(
                SinkId(s),
                SinkParams {
                    twcc_ext: Some(3),
                    remb: false,
                },
            );
        }
        room.subscribe(
            now,
            track,
            SinkId(s),
            SubscriptionParams {
                ssrc: s as u32,
                payload_type: 96,
                max_layer: 0,
                rtx: None,
                red_payload_type: None,
            },
        )
        .unwrap();
    }
    room.handle_rtp(now, track, 0, packet(0, true));
    while room.poll_output().is_some() {}
    let template = packet(1, false);
    let mut seq = 1u16;
    let mut g = c.benchmark_group("room");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut p = template.clone();
            p.header.sequence_number = seq;
            room.handle_rtp(now, track, 0, p);
            let mut n = 0;
            while let Some(o) = room.poll_output() {
                if let Output::Rtp { packet, .. } = o {
                    black_box(&packet);
                    n += 1;
                }
            }
            assert_eq!(n, SUBSCRIBERS);
        })
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    fan_out_bench(c, "fan_out_to_100_subscriptions", false);
    fan_out_bench(
        c,
        "fan_out_to_100_subscriptions_with_congestion_control",
        true,
    );
}

criterion_group!(benches, forwarder, fan_out);
criterion_main!(benches);
