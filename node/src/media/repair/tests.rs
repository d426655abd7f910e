//! The repair interceptor alone and in a chain with webrtc-rs's NACK generator: RTX packets of
//! simulcast layers (named by MID and RRID) and of declared RTX streams become the packets they
//! repeat, repeats and padding stay as they were, and the generator stops asking once a packet
//! came back.

use super::*;
use bytes::Bytes;
use rtc::interceptor::{
    AttributedPacket, NackGeneratorBuilder, RTCPFeedback, RTPHeaderExtension, Slot,
};
use rtc::rtp::header::Extension;
use rtc::shared::TransportContext;

const MEDIA: u32 = 1111;
const RTX: u32 = 2222;
const EXT_MID: u8 = 3;
const EXT_RID: u8 = 4;
const EXT_RRID: u8 = 5;

fn info(ssrc: u32, ssrc_rtx: Option<u32>) -> StreamInfo {
    StreamInfo {
        ssrc,
        ssrc_rtx,
        payload_type: 96,
        rtp_header_extensions: [(MID_URI, EXT_MID), (RID_URI, EXT_RID), (RRID_URI, EXT_RRID)]
            .into_iter()
            .map(|(uri, id)| RTPHeaderExtension {
                uri: uri.into(),
                id: id as u16,
            })
            .collect(),
        mime_type: "video/VP8".into(),
        clock_rate: 90_000,
        rtcp_feedback: vec![RTCPFeedback {
            typ: "nack".into(),
            parameter: "".into(),
        }],
        ..Default::default()
    }
}

/// A packet; `ext` are (id, value) header extensions.
fn rtp(ssrc: u32, pt: u8, seq: u16, payload: &[u8], ext: &[(u8, &str)]) -> TaggedPacket {
    let header = rtc::rtp::Header {
        version: 2,
        payload_type: pt,
        sequence_number: seq,
        ssrc,
        extension: !ext.is_empty(),
        extension_profile: 0xBEDE,
        extensions: ext
            .iter()
            .map(|(id, v)| Extension {
                id: *id,
                payload: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
        ..Default::default()
    };
    TaggedPacket {
        now: Instant::now(),
        transport: TransportContext::default(),
        message: AttributedPacket::new(Packet::Rtp(rtc::rtp::Packet {
            header,
            payload: Bytes::copy_from_slice(payload),
        })),
    }
}

fn read(r: &mut impl Interceptor, p: TaggedPacket) -> rtc::rtp::Packet {
    r.handle_read(p).unwrap();
    match r.poll_read().expect("the packet goes on").message.packet {
        Packet::Rtp(p) => p,
        _ => panic!("RTP in, something else out"),
    }
}

#[test]
fn the_window_tells_new_from_repeated_across_a_wrap() {
    let mut r = Received::default();
    assert!(r.insert(65_530));
    assert!(r.insert(65_535));
    assert!(r.insert(3), "after the wrap");
    assert!(r.insert(65_533), "a late one, before the wrap");
    assert!(!r.insert(65_533), "a repeat");
    assert!(r.insert(1), "missing until now");
    assert!(!r.insert(3));
    // Far ahead: what is older than the window is reported as nothing new.
    assert!(r.insert(3 + 2 * WINDOW as u16));
    assert!(!r.insert(4), "too old to tell");
    assert!(r.insert(3 + 2 * WINDOW as u16 - 1));
}

#[test]
fn a_simulcast_layers_rtx_packet_becomes_the_missing_packet_once() {
    let metrics = RepairMetrics::default();
    let mut r = RtxRepair::new(metrics.clone());
    r.bind_remote_stream(&info(MEDIA, None));
    let ids = [(EXT_MID, "0"), (EXT_RID, "h")];
    read(&mut r, rtp(MEDIA, 96, 10, b"ten", &ids));
    read(&mut r, rtp(MEDIA, 96, 12, b"twelve", &[]));
    // An RTX packet of another layer (RRID "f") is left alone.
    let other = read(
        &mut r,
        rtp(
            RTX + 1,
            97,
            1,
            &[0, 11, 1],
            &[(EXT_MID, "0"), (EXT_RRID, "f")],
        ),
    );
    assert_eq!(other.header.ssrc, RTX + 1);
    let rtx_ids = [(EXT_MID, "0"), (EXT_RRID, "h")];
    let p = read(&mut r, rtp(RTX, 97, 500, &[0, 11, b'e', b'l'], &rtx_ids));
    assert_eq!(
        (
            p.header.ssrc,
            p.header.payload_type,
            p.header.sequence_number
        ),
        (MEDIA, 96, 11)
    );
    assert_eq!(&p.payload[..], b"el");
    // Again (a probe resending it): left as RTX, for webrtc-rs to drop.
    let p = read(&mut r, rtp(RTX, 97, 501, &[0, 11, b'e', b'l'], &[]));
    assert_eq!((p.header.ssrc, p.header.sequence_number), (RTX, 501));
    // Padding only: left alone, not counted.
    let p = read(&mut r, rtp(RTX, 97, 502, &[], &[]));
    assert_eq!(p.header.ssrc, RTX);
    // Known by its SSRC now, without extensions.
    let p = read(&mut r, rtp(RTX, 97, 503, &[0, 13, 7], &[]));
    assert_eq!((p.header.ssrc, p.header.sequence_number), (MEDIA, 13));
    assert_eq!((metrics.repaired.get(), metrics.repeated.get()), (2, 1));
}

/// The chain of a publisher connection's NACK generation, as `peer::build` makes it.
fn chain(metrics: &RepairMetrics) -> impl Interceptor {
    rtc::interceptor::Registry::new()
        .with(Slot::from(REPAIR_SLOT), RtxRepair::new(metrics.clone()))
        .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
        .build()
}

/// The sequence numbers of the NACKs the chain sends now, by media SSRC.
fn nacks(c: &mut impl Interceptor, now: Instant) -> Vec<(u32, Vec<u16>)> {
    c.handle_timeout(now).unwrap();
    let mut out = Vec::new();
    while let Some(p) = c.poll_write() {
        if let Packet::Rtcp(packets) = p.message.packet {
            for p in packets {
                if let Some(n) = p.as_any().downcast_ref::<TransportLayerNack>() {
                    let lost = n.nacks.iter().flat_map(|n| n.packet_list()).collect();
                    out.push((n.media_ssrc, lost));
                }
            }
        }
    }
    out
}

#[test]
fn the_nack_generator_stops_asking_once_the_retransmission_came_and_never_nacks_rtx() {
    let metrics = RepairMetrics::default();
    let mut c = chain(&metrics);
    // A stream declared with its RTX stream (`a=ssrc-group:FID`): webrtc-rs binds both.
    c.bind_remote_stream(&info(MEDIA, Some(RTX)));
    c.bind_remote_stream(&StreamInfo {
        payload_type: 97,
        ..info(RTX, None)
    });
    let t0 = Instant::now();
    for seq in [1, 2, 4, 5] {
        read(&mut c, rtp(MEDIA, 96, seq, b"x", &[]));
    }
    // Repeats stay on the RTX stream, whose own numbering then has a gap (6 and 7) that the
    // generator would NACK.
    read(&mut c, rtp(RTX, 97, 5, &[0, 2, 1], &[]));
    read(&mut c, rtp(RTX, 97, 8, &[0, 1, 1], &[]));
    let later = t0 + std::time::Duration::from_millis(300);
    assert_eq!(nacks(&mut c, later), vec![(MEDIA, vec![3])]);
    assert_eq!(metrics.nacked.get(), 1);
    let p = read(&mut c, rtp(RTX, 97, 9, &[0, 3, 9], &[]));
    assert_eq!((p.header.ssrc, p.header.sequence_number), (MEDIA, 3));
    let much_later = later + std::time::Duration::from_millis(300);
    assert_eq!(
        nacks(&mut c, much_later),
        vec![],
        "nothing missing any more"
    );
    assert_eq!((metrics.repaired.get(), metrics.repeated.get()), (1, 2));
}

#[test]
fn a_declared_rtx_stream_bound_before_its_media_stream_still_repairs_it() {
    let metrics = RepairMetrics::default();
    let mut r = RtxRepair::new(metrics.clone());
    // The RTX stream first (taken for media at first), then the stream declaring it.
    r.bind_remote_stream(&info(RTX, None));
    r.bind_remote_stream(&info(MEDIA, Some(RTX)));
    read(&mut r, rtp(MEDIA, 96, 20, b"twenty", &[]));
    read(&mut r, rtp(MEDIA, 96, 22, b"twenty-two", &[]));
    let p = read(&mut r, rtp(RTX, 97, 7, &[0, 21, 9], &[]));
    assert_eq!((p.header.ssrc, p.header.sequence_number), (MEDIA, 21));
    assert_eq!(metrics.repaired.get(), 1);
}
