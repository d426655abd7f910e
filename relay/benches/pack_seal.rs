//! What a relayed packet costs the sending worker between the forwarding core and the socket
//! on the direct path: packing into a datagram and sealing it. Two ways: pack, then seal a copy
//! into the send buffer (before), or pack with room for the header and tag and seal in place
//! (now). One link, 1,100-byte packets, one per datagram (a path of 1,200 bytes). As in the
//! worker, a turn's sealed datagrams wait in the send queue until the turn's `sendmmsg`, then
//! are dropped.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sfu_core::Packet;
use sfu_relay::core::sink;
use sfu_relay::direct::{OVERHEAD, Sealer};
use sfu_relay::glue::Outbox;
use std::hint::black_box;

const PACKETS: usize = 64;
const MAX: usize = 1200 - OVERHEAD;

fn packet(seq: u16) -> Packet {
    let mut p = Packet {
        payload: Bytes::from(vec![0x42u8; 1100]),
        ..Default::default()
    };
    p.header.ssrc = 42;
    p.header.sequence_number = seq;
    p.header.payload_type = 96;
    p
}

fn pack_and_seal(c: &mut Criterion) {
    let packets: Vec<Packet> = (0..PACKETS as u16).map(packet).collect();
    let mut g = c.benchmark_group("relay_pack_seal");
    g.throughput(Throughput::Elements(PACKETS as u64));
    let mut sealer = Sealer::new(&[7; 16], 1, 0);
    let mut outbox = Outbox::default();
    // The worker's send buffer (a chunk the send queue's datagrams are split from).
    let mut send_buffer = BytesMut::with_capacity(64 * 1024);
    let mut queue: Vec<BytesMut> = Vec::with_capacity(PACKETS);
    g.bench_function("seal_a_copy", |b| {
        b.iter(|| {
            for p in &packets {
                outbox.push(sink(0, 5), p.clone());
            }
            outbox.flush(
                |_| MAX,
                |_, d| {
                    if send_buffer.capacity() - send_buffer.len() < d.len() + OVERHEAD {
                        send_buffer.reserve(64 * 1024);
                    }
                    sealer.seal(&d, &mut send_buffer);
                    queue.push(send_buffer.split());
                },
            );
            black_box(&queue);
            queue.clear();
        })
    });
    g.bench_function("seal_in_place", |b| {
        b.iter(|| {
            for p in &packets {
                outbox.push(sink(0, 5), p.clone());
            }
            outbox.flush_framed(
                |_| (MAX, Sealer::FRAMING),
                |_, mut d, _| {
                    sealer.seal_in_place(&mut d);
                    queue.push(d);
                },
            );
            black_box(&queue);
            queue.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, pack_and_seal);
criterion_main!(benches);
