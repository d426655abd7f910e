//! The fan-out of a forwarded packet allocates nothing in steady state: the forwarding core
//! rewrites one shared packet per subscriber (TWCC numbers and VP8 picture ids as edits, not
//! copies), and the node's transport writes and protects each copy where it lies in the send
//! buffer, which is reused once its datagrams are sent. The worker's send queue then sends them
//! over a real socket (loopback), a frame's packets to one subscriber grouped into one message
//! where the kernel segments UDP (GSO). Counted with a global allocator that counts, over 200
//! subscribers and 300 packets each (60,000 sends).

use bytes::Bytes;
use sfu_core::{
    Codec, MediaKind, Output, Packet, Room, RoomConfig, SinkId, SinkParams, SubscriptionParams,
    TrackId, TrackInfo, WallClock,
};
use sfu_node::media::transport::Transport;
use sfu_node::media::transport::arena::SendArena;
use sfu_node::media::transport::dtls::SrtpKeys;
use sfu_node::media::transport::srtp::Profile;
use sfu_node::media::udp::{SendQueue, bind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;

thread_local! {
    /// Counting on this thread only: the test harness's own threads allocate meanwhile.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: delegates to the system allocator; counting has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SUBSCRIBERS: u64 = 200;

/// A VP8 packet with a 15-bit picture id (so every subscriber's numbering is an edit).
fn vp8(seq: u16, key: bool) -> Packet {
    let mut payload = vec![0u8; 1100];
    payload[..5].copy_from_slice(&[0x90, 0x80, 0x80 | (seq >> 8) as u8 & 0x7f, seq as u8, 0]);
    payload[5] = if key { 0x00 } else { 0x01 };
    // A payload already shared, as a packet's is once the node has its first copy: its clones
    // only count references (the first clone of a fresh `Bytes` allocates its counter).
    let payload = Bytes::from(payload);
    let _shared = payload.clone();
    let mut p = Packet {
        payload,
        ..Default::default()
    };
    p.header.version = 2;
    p.header.ssrc = 42;
    p.header.sequence_number = seq;
    p.header.timestamp = seq as u32 * 3000;
    p.header.payload_type = 96;
    p
}

#[test]
fn fanning_a_packet_out_to_200_subscribers_allocates_nothing_in_steady_state() {
    let now = Instant::now();
    let mut room = Room::new(WallClock::new(now, Duration::ZERO), RoomConfig::default());
    let track = TrackId(1);
    room.add_track(
        now,
        TrackInfo::new(track, MediaKind::Video, Codec::Vp8, 90_000, 1),
    )
    .unwrap();
    let provider = rtc::crypto::default_provider().unwrap();
    let certificate = sfu_node::media::peer::worker_certificate().unwrap();
    let local: SocketAddr = "127.0.0.1:7882".parse().unwrap();
    let mut transports = Vec::new();
    for s in 0..SUBSCRIBERS {
        room.set_sink(
            SinkId(s),
            SinkParams {
                twcc_ext: Some(3),
                remb: false,
            },
        );
        room.subscribe(
            now,
            track,
            SinkId(s),
            SubscriptionParams {
                ssrc: 1000 + s as u32,
                payload_type: 96,
                max_layer: 0,
                rtx: None,
                red_payload_type: None,
            },
        )
        .unwrap();
        let profile = if s % 2 == 0 {
            Profile::AeadAes128Gcm
        } else {
            Profile::Aes128CmHmacSha1_80
        };
        let keys = SrtpKeys {
            profile,
            local_key: vec![s as u8; 16],
            local_salt: vec![7; profile.salt_len()],
            remote_key: vec![1; 16],
            remote_salt: vec![2; profile.salt_len()],
        };
        let remote = SocketAddr::new([127, 0, 0, 1].into(), 20_000 + s as u16);
        let t = Transport::new(
            "ufrag",
            "pwd-pwd-pwd-pwd-pwd-pwd",
            local,
            &certificate,
            provider.clone(),
        )
        .unwrap()
        .established(keys, remote)
        .unwrap();
        transports.push(t);
    }
    let mut arena = SendArena::default();
    let mut queue = SendQueue::default();
    // The worker's loop: a current-thread runtime and a socket of its own. The subscribers'
    // ports are closed; loopback drops what they do not read, as a network would.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = runtime
        .block_on(async {
            tokio::net::UdpSocket::from_std(bind("127.0.0.1:0".parse().unwrap()).unwrap())
        })
        .unwrap();
    let mut sent = 0u64;
    // The publisher's packets arrive from the network into buffers of their own; made here
    // before counting.
    let input: Vec<Packet> = (0..3_300u16).map(|seq| vp8(seq, seq == 0)).collect();
    let mut input = input.into_iter();
    let mut run = |room: &mut Room, count: u16, sent: &mut u64| {
        for (i, packet) in input.by_ref().take(count as usize).enumerate() {
            room.handle_rtp(now, track, 0, packet);
            while let Some(o) = room.poll_output() {
                if let Output::Rtp {
                    sink,
                    packet,
                    edits,
                    ..
                } = o
                {
                    let t = &mut transports[sink.0 as usize];
                    if let Some(d) = t
                        .send_rtp(&packet.header, &packet.payload, &edits, &mut arena)
                        .unwrap()
                    {
                        queue.push(d.0, d.1);
                        *sent += 1;
                    }
                }
            }
            // The worker sends a frame's worth (four packets to each subscriber) at once and
            // drops the datagrams; their buffer is free again.
            if i % 4 == 3 {
                let refused = runtime.block_on(queue.flush(&socket));
                assert_eq!(refused, 0, "the kernel took every datagram");
            }
        }
    };
    // Warm-up: the output queue, the retransmission cache, the estimators' histories and the
    // send buffer grow to their working size.
    run(&mut room, 3_000, &mut sent);
    assert_eq!(
        sent,
        3_000 * SUBSCRIBERS,
        "every packet reached every subscriber"
    );
    COUNTING.with(|c| c.set(true));
    run(&mut room, 300, &mut sent);
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(sent, 3_300 * SUBSCRIBERS);
    let kernel = queue.take_sent();
    assert_eq!(kernel.datagrams, sent, "the kernel took every datagram");
    // Four packets of one size to each subscriber per flush: one message each where the
    // kernel segments UDP (Linux 4.18+, as on every machine this runs on).
    assert_eq!(kernel.messages * 4, kernel.datagrams, "{kernel:?}");
    assert_eq!(
        allocations,
        0,
        "{allocations} allocations for {} sends",
        300 * SUBSCRIBERS
    );
}
