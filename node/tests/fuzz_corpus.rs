//! The fuzz targets on stable Rust: every file of `fuzz/corpus/NAME/` through
//! `sfu_node::fuzzing::NAME`, then pseudo-random mutations of them (bit flips, truncations,
//! insertions, splices), so CI exercises each target without nightly or libFuzzer.
//!
//! `cargo test -p sfu-node --test fuzz_corpus -- --ignored write_seeds` rewrites the seed files
//! (`seed-*`) from the crates' own encoders.

use std::path::PathBuf;
use std::time::Instant;

/// Mutations per target (spread over its corpus files).
const MUTATIONS: usize = 20_000;
/// Longest mutated input.
const MAX_LEN: usize = 4096;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).expect("corpus file");
            (p, data)
        })
        .collect();
    files.sort();
    files
}

/// xorshift64*: small, seeded, the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Values that often sit on a parser's boundaries.
const INTERESTING: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, 0x40, 0x20, 0x10, 12, 4];

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] ^= 1 << rng.below(8);
            }
            1 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if !d.is_empty() => {
                let i = rng.below(d.len());
                d[i] = rng.next() as u8;
            }
            3 => {
                let len = rng.below(d.len() + 1);
                d.truncate(len);
            }
            4 => {
                let at = rng.below(d.len() + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    d.insert(at, rng.next() as u8);
                }
            }
            5 if !other.is_empty() => {
                // Splice: a head of this input, a tail of another.
                let at = rng.below(d.len() + 1);
                let from = rng.below(other.len());
                d.truncate(at);
                d.extend_from_slice(&other[from..]);
            }
            _ if d.len() >= 2 => {
                // Copy a range over another place (repeats structure).
                let a = rng.below(d.len());
                let b = rng.below(d.len());
                let n = rng.below(d.len() - a.max(b)).min(16);
                let chunk = d[a..a + n].to_vec();
                d[b..b + n].copy_from_slice(&chunk);
            }
            _ => {}
        }
    }
    d.truncate(MAX_LEN);
    d
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    let started = Instant::now();
    for &(name, target) in sfu_node::fuzzing::TARGETS {
        let t = Instant::now();
        let files = corpus(name);
        assert!(
            !files.is_empty(),
            "fuzz/corpus/{name} has no seed files: every target needs some"
        );
        for (path, data) in &files {
            eprintln!("{name}: {}", path.display());
            target(data);
        }
        let mut rng = Rng(0x5eed_0000_0000_0001 ^ (name.len() as u64 * 0x9e37_79b9));
        for i in 0..MUTATIONS {
            let (_, input) = &files[i % files.len()];
            let (_, other) = &files[rng.below(files.len())];
            let mutated = mutate(&mut rng, input, other);
            let result = std::panic::catch_unwind(|| target(&mutated));
            if result.is_err() {
                panic!("{name}: mutation {i} panics on input {mutated:02x?}");
            }
        }
        eprintln!(
            "{name}: {} corpus files, {MUTATIONS} mutations in {:?}",
            files.len(),
            t.elapsed()
        );
    }
    eprintln!("all targets in {:?}", started.elapsed());
}

/// Writes the generated seed files of every target (run by hand; see the module docs).
#[test]
#[ignore]
fn write_seeds() {
    for (target, files) in seeds::all() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        for (name, data) in files {
            std::fs::write(dir.join(format!("seed-{name}")), data).expect("seed file");
        }
    }
}

mod seeds {
    use bytes::{Bytes, BytesMut};
    use rtc::rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
    use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
    use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    use rtc::rtcp::receiver_report::ReceiverReport;
    use rtc::rtcp::sender_report::SenderReport;
    use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
    use rtc::rtp::header::Header;
    use rtc::rtp::packet::Packet;
    use rtc::shared::marshal::Marshal;
    use rtc::stun::attributes::{ATTR_USE_CANDIDATE, ATTR_USERNAME};
    use rtc::stun::fingerprint::FINGERPRINT;
    use rtc::stun::integrity::MessageIntegrity;
    use rtc::stun::message::{BINDING_REQUEST, Message, Setter, TransactionId};
    use rtc::stun::textattrs::TextAttribute;
    use sfu_node::fuzzing::{STUN_PWD, STUN_UFRAG};
    use sfu_proto::relay::{Frame, frame::Body};
    use std::time::Duration;

    type Files = Vec<(&'static str, Vec<u8>)>;

    pub fn all() -> Vec<(&'static str, Files)> {
        vec![
            ("stun", stun()),
            ("rtp_room", rtp_room()),
            ("vp8", vp8()),
            ("red", red()),
            ("relay_wire", relay_wire()),
            ("relay_direct", relay_direct()),
            ("signaling", signaling()),
            ("whip_patch", whip_patch()),
            ("records", records()),
        ]
    }

    fn binding_request(username: &str, pwd: Option<&str>, use_candidate: bool) -> Vec<u8> {
        let provider = rtc::crypto::default_provider().unwrap();
        let crypto = provider.crypto();
        let mut m = Message::new();
        let setters: [Box<dyn Setter + '_>; 3] = [
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId([7; 12])),
            Box::new(TextAttribute::new(ATTR_USERNAME, username.to_owned())),
        ];
        m.build(&setters).unwrap();
        if use_candidate {
            m.add(ATTR_USE_CANDIDATE, &[]);
        }
        if let Some(pwd) = pwd {
            MessageIntegrity::new_short_term_integrity_with_provider(pwd.to_owned(), crypto)
                .add_to(&mut m)
                .unwrap();
            FINGERPRINT.add_to(&mut m).unwrap();
        }
        m.raw
    }

    fn stun() -> Files {
        let username = format!("{STUN_UFRAG}:remote");
        let good = binding_request(&username, Some(STUN_PWD), true);
        // The seed must be answered, or it would not reach the end of the parser.
        let provider = rtc::crypto::default_provider().unwrap();
        let from = "192.0.2.7:5000".parse().unwrap();
        sfu_node::media::transport::stun::answer(
            &good,
            from,
            STUN_UFRAG,
            STUN_PWD,
            provider.crypto(),
        )
        .expect("the seed binding request is answered");
        vec![
            ("binding-request", good),
            (
                "binding-request-no-nomination",
                binding_request(&username, Some(STUN_PWD), false),
            ),
            (
                "binding-request-unsigned",
                binding_request("other:remote", None, false),
            ),
            (
                "dtls-client-hello-start",
                vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0],
            ),
        ]
    }

    fn rtp(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
        Packet {
            header: Header {
                version: 2,
                payload_type: pt,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                marker,
                ..Default::default()
            },
            payload: Bytes::copy_from_slice(payload),
        }
        .marshal()
        .unwrap()
        .to_vec()
    }

    fn audio_rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut header = Header {
            version: 2,
            payload_type: 63,
            sequence_number: seq,
            timestamp: seq as u32 * 960,
            ssrc: 0xa,
            ..Default::default()
        };
        header.extension = true;
        header.extension_profile = 0xBEDE;
        header
            .set_extension(1, Bytes::from_static(&[0x80 | 30]))
            .unwrap();
        Packet {
            header,
            payload: Bytes::copy_from_slice(payload),
        }
        .marshal()
        .unwrap()
        .to_vec()
    }

    fn rtcp(packets: Vec<Box<dyn rtc::rtcp::packet::Packet>>) -> Vec<u8> {
        rtc::rtcp::packet::marshal(&packets).unwrap().to_vec()
    }

    /// One record of the `rtp_room` input: operation (kind in the low 3 bits, time step of
    /// 5 ms per unit above them), length, bytes.
    fn record(out: &mut Vec<u8>, kind: u8, step: u8, data: &[u8]) {
        out.push(kind | (step << 3));
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }

    /// A VP8 payload: descriptor with a 15-bit picture id and TL0PICIDX, then a frame header.
    fn vp8_payload(pid: u16, tl0: u8, keyframe: bool) -> Vec<u8> {
        let mut p = vec![0x90, 0xe0, 0x80 | (pid >> 8) as u8, pid as u8, tl0, 0x20];
        if keyframe {
            p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        } else {
            p.extend_from_slice(&[0x31, 0x02, 0x00]);
        }
        p.extend_from_slice(&[0xaa; 40]);
        p
    }

    fn rtp_room() -> Files {
        let mut media = Vec::new();
        for frame in 0..4u16 {
            for layer in 0..3u8 {
                let seq = 1000 * (layer as u16 + 1) + frame;
                let p = vp8_payload(100 + frame, 7 + frame as u8, frame == 0);
                let ssrc = 0x100 + layer as u32;
                record(
                    &mut media,
                    layer,
                    0,
                    &rtp(96, seq, 3000 * frame as u32, ssrc, true, &p),
                );
            }
            // RED audio: one redundant block of 3 bytes, then the primary.
            let red = [0xef, 0x03, 0xc0, 0x03, 0x6f, 1, 2, 3, 9, 9, 9, 9];
            record(&mut media, 3, 4, &audio_rtp(7 + frame, &red));
        }
        let mut feedback = media.clone();
        let nack = TransportLayerNack {
            sender_ssrc: 9,
            media_ssrc: 1,
            nacks: vec![NackPair {
                packet_id: 0,
                lost_packets: 0b101,
            }],
        };
        let pli = PictureLossIndication {
            sender_ssrc: 9,
            media_ssrc: 1,
        };
        let twcc = sfu_core::twcc_feedback::twcc_feedback(
            0,
            &[
                Some(Duration::from_millis(10)),
                None,
                Some(Duration::from_millis(31)),
            ],
            0,
        );
        record(
            &mut feedback,
            4,
            2,
            &rtcp(vec![
                Box::new(ReceiverReport {
                    ssrc: 9,
                    ..Default::default()
                }),
                Box::new(nack),
                Box::new(pli),
                Box::new(twcc),
            ]),
        );
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 9,
            bitrate: 300_000.0,
            ssrcs: vec![11],
        };
        let fir = FullIntraRequest {
            sender_ssrc: 9,
            media_ssrc: 0,
            fir: vec![FirEntry {
                ssrc: 11,
                sequence_number: 1,
            }],
        };
        record(
            &mut feedback,
            5,
            2,
            &rtcp(vec![Box::new(remb), Box::new(fir)]),
        );
        let sr = SenderReport {
            ssrc: 0x101,
            ntp_time: 0xe000_0000_0000_0000,
            rtp_time: 9000,
            packet_count: 4,
            octet_count: 200,
            ..Default::default()
        };
        record(&mut feedback, 4, 1, &rtcp(vec![Box::new(sr)]));
        let mut control = media.clone();
        record(&mut control, 6, 1, &[0, 0x08]); // max layer 1
        record(&mut control, 6, 1, &[2, 0x81]); // pinned
        record(&mut control, 6, 20, &[1, 0x02]); // mute
        record(&mut control, 6, 20, &[0, 0x03]); // relay keyframe request
        record(
            &mut control,
            7,
            31,
            &rtp(96, 5, 0, 0x102, false, &vp8_payload(5, 1, false)),
        );
        vec![
            ("media", media),
            ("feedback", feedback),
            ("control", control),
        ]
    }

    fn vp8() -> Files {
        vec![
            ("keyframe-long-pid-tl0", vp8_payload(0x1234, 9, true)),
            ("delta-long-pid-tl0", vp8_payload(0x7fff, 255, false)),
            // Short picture id, no TL0PICIDX.
            ("short-pid", vec![0x90, 0x80, 0x05, 0x31, 0x02, 0x00, 0xaa]),
            // No extension at all.
            (
                "no-extension",
                vec![0x10, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 1, 0, 1, 0],
            ),
        ]
    }

    fn red() -> Files {
        vec![
            (
                "one-redundant-block",
                vec![0xef, 0x0f, 0x00, 0x03, 0x6f, 1, 2, 3, 9, 9],
            ),
            (
                "two-redundant-blocks",
                vec![
                    0xef, 0x1e, 0x00, 0x02, 0xef, 0x0f, 0x00, 0x01, 0x6f, 1, 2, 3, 9,
                ],
            ),
            ("primary-only", vec![0x6f, 7, 7, 7]),
        ]
    }

    /// Direct datagrams sealed with the target's key: a probe, one with records, and one
    /// sealed by a high worker.
    fn relay_direct() -> Files {
        use sfu_relay::direct::Sealer;
        let key = &sfu_node::fuzzing::DIRECT_KEY;
        let a = rtp(96, 1000, 0, 0x100, true, &vp8_payload(1, 1, true));
        let b = audio_rtp(7, &[0x6f, 1, 2, 3]);
        let mut records = sfu_relay::wire::encode_datagram(1, &a).to_vec();
        records.extend_from_slice(&sfu_relay::wire::encode_datagram(300, &b));
        let seal = |worker, payload: &[u8]| {
            let mut out = BytesMut::new();
            Sealer::new(key, 0x5eed, worker).seal(payload, &mut out);
            out.to_vec()
        };
        vec![
            ("probe", seal(0, &[])),
            ("two-records", seal(1, &records)),
            ("worker-1000", seal(1000, &records[..records.len() / 2])),
        ]
    }

    fn relay_wire() -> Files {
        use sfu_proto::relay as p;
        let frames = [
            Body::Hello(p::Hello {
                node_id: "node-1".into(),
                protocol_version: 1,
                ..Default::default()
            }),
            Body::Subscribe(p::Subscribe {
                room: "demo".into(),
                track: 0x71de0,
                layers: vec![0, 1, 2],
                origin: "node-2".into(),
            }),
            Body::Nack(p::Nack {
                flow: 3,
                seqs: vec![1000, 1001, 1005],
            }),
            Body::KeyframeRequest(p::KeyframeRequest {
                room: "demo".into(),
                track: 0x71de0,
                layer: 2,
            }),
        ];
        let mut stream = BytesMut::new();
        for body in frames {
            sfu_relay::wire::encode_frame(&Frame { body: Some(body) }, &mut stream);
        }
        let a = rtp(96, 1000, 0, 0x100, true, &vp8_payload(1, 1, true));
        let b = audio_rtp(7, &[0x6f, 1, 2, 3]);
        let mut writer = sfu_relay::wire::DatagramWriter::default();
        for (flow, packet) in [(1u32, &a), (300, &b)] {
            let none = writer.push(1200, flow, packet.len(), |out| {
                out.extend_from_slice(packet);
                true
            });
            assert!(none.is_none());
        }
        let datagram = writer.finish().unwrap();
        assert_eq!(sfu_relay::wire::records(datagram.clone()).count(), 2);
        vec![
            ("control-stream", stream.to_vec()),
            ("datagram-two-records", datagram.to_vec()),
            (
                "datagram-one-record",
                sfu_relay::wire::encode_datagram(7, &b).to_vec(),
            ),
        ]
    }

    fn signaling() -> Files {
        let token = sfu_control::auth::mint(
            "fuzz-secret",
            &sfu_control::auth::admin_claims("fuzzkey", Duration::from_secs(10 * 365 * 86_400)),
        )
        .unwrap();
        let json = |s: &str| s.as_bytes().to_vec();
        vec![
            ("join", json(r#"{"type":"join","auto_subscribe":false}"#)),
            (
                "publish",
                json(
                    r#"{"type":"publish","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n","sources":{"cam":"camera","screen":"screen_share"}}"#,
                ),
            ),
            (
                "subscribe",
                json(r#"{"type":"subscribe","tracks":["TR_1","TR_2"]}"#),
            ),
            (
                "trickle",
                json(
                    r#"{"type":"trickle","target":"publisher","candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host","sdp_mid":"0"}"#,
                ),
            ),
            (
                "track-settings",
                json(
                    r#"{"type":"track_settings","track":"TR_1","width":640,"height":360,"enabled":true,"pinned":false}"#,
                ),
            ),
            (
                "mute",
                json(r#"{"type":"mute","track":"TR_1","muted":true}"#),
            ),
            (
                "update-participant",
                json(r#"{"type":"update_participant","identity":"bob","can_publish":true}"#),
            ),
            ("ping", json(r#"{"type":"ping","id":42}"#)),
            ("token", token.into_bytes()),
        ]
    }

    fn whip_patch() -> Files {
        let s = |s: &str| s.as_bytes().to_vec();
        vec![
            (
                "candidates",
                s(
                    "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0 ufrag EsAw network-id 1\r\na=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0 ufrag EsAw network-id 2\r\na=end-of-candidates\r\n",
                ),
            ),
            (
                "srflx-and-tcp",
                s(
                    "a=ice-ufrag:EsAw\r\na=mid:1\r\na=candidate:842163049 1 udp 1677729535 203.0.113.5 46154 typ srflx raddr 10.0.0.1 rport 46154 generation 0\r\na=candidate:1 1 tcp 1518280447 192.0.2.1 9 typ host tcptype active\r\n",
                ),
            ),
        ]
    }

    fn records() -> Files {
        let s = |s: &str| s.as_bytes().to_vec();
        vec![
            (
                "node",
                s(
                    r#"{"id":"node-1","region":"eu","http_url":"http://192.0.2.1:7880","relay_addr":"192.0.2.1:7881","state":"active","capacity":100,"limits":{"media_cores":2.0,"egress_bps":1000000000},"load":{"rooms":1,"participants":2,"tracks":3,"cpu":0.5,"media_cpu":0.25,"egress_bps":1000},"updated_ms":1700000000000}"#,
                ),
            ),
            (
                "participant",
                s(
                    r#"{"sid":"PA_1","identity":"alice","name":"Alice","node":"node-1","kind":"standard","joined_ms":1,"stage":true,"worker":0}"#,
                ),
            ),
            (
                "track",
                s(
                    r#"{"track":"TR_1","participant":"PA_1","kind":"video","codec_mime":"video/VP8","clock_rate":90000,"rids":["q","h","f"],"name":"camera","origin":"node-1","muted":false,"source":"camera","audio_levels":false,"red_payload_type":null,"worker":1}"#,
                ),
            ),
            (
                "hand",
                s(r#"{"sid":"PA_2","identity":"bob","name":"Bob","node":"node-2","raised_ms":5}"#),
            ),
            (
                "room-config",
                s(
                    r#"{"name":"demo","max_participants":10,"empty_timeout":300,"created_ms":1,"empty_since_ms":null,"large_room_threshold":50}"#,
                ),
            ),
            (
                "counts",
                s(r#"{"participants":3,"count":4,"reserved":2,"used":1}"#),
            ),
            (
                "key-audience",
                s("/sfu/fuzz/rooms/demo/participants/audience/node-1#w0"),
            ),
        ]
    }
}
