//! A client of the simulated network: a real webrtc-rs peer connection that publishes
//! synthetic audio and video or receives, with the NACK interceptors a browser has.

use super::net::{MID_URI, address};
use bytes::{Bytes, BytesMut};
use rtc::interceptor::{NackGeneratorBuilder, NackResponderBuilder, Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

pub(super) struct Client {
    pub(super) pc: RTCPeerConnection,
    pub(super) addr: SocketAddr,
    /// What a publishing client sends.
    pub(super) senders: Vec<OutStream>,
    pub(super) candidate_added: bool,
    /// RTP packets decrypted, by SSRC: (count, last sequence number).
    pub(super) received: HashMap<u32, (u64, u16)>,
    /// Payload types of what was received.
    pub(super) payload_types: Vec<u8>,
}

pub(super) struct OutStream {
    pub(super) sender: RTCRtpSenderId,
    pub(super) ssrc: u32,
    pub(super) seq: u16,
    pub(super) payload_type: u8,
    pub(super) mid: Option<(u8, Bytes)>,
    pub(super) video: bool,
}

pub(super) fn media_engine() -> MediaEngine {
    let mut me = MediaEngine::default();
    let feedback = ["", "pli"]
        .into_iter()
        .map(|p| RTCPFeedback {
            typ: "nack".into(),
            parameter: p.into(),
        })
        .collect();
    let codecs = [
        (MIME_TYPE_OPUS, 48_000, 2, 111, vec![], RtpCodecKind::Audio),
        (MIME_TYPE_VP8, 90_000, 0, 96, feedback, RtpCodecKind::Video),
    ];
    for (mime, clock_rate, channels, pt, rtcp_feedback, kind) in codecs {
        me.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime.into(),
                    clock_rate,
                    channels,
                    sdp_fmtp_line: String::new(),
                    rtcp_feedback,
                },
                payload_type: pt,
            },
            kind,
        )
        .unwrap();
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: MID_URI.into(),
            },
            kind,
            None,
        )
        .unwrap();
    }
    me
}

impl Client {
    pub(super) fn new(now: Instant, port: u16) -> Self {
        // Answers take the DTLS client role, as browsers do.
        let settings = SettingEngineBuilder::new()
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        // A browser's: it asks for lost packets and answers for its own.
        let interceptors = Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::NackResponder, NackResponderBuilder::new().build());
        let pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media_engine())
            .with_interceptor_registry(interceptors)
            .build(now)
            .unwrap();
        Self {
            pc,
            addr: address(port),
            senders: Vec::new(),
            candidate_added: false,
            received: HashMap::new(),
            payload_types: Vec::new(),
        }
    }

    /// Our one host candidate, then end-of-candidates.
    pub(super) fn add_candidate(&mut self) {
        if self.candidate_added {
            return;
        }
        self.candidate_added = true;
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: self.addr.ip().to_string(),
                port: self.addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()
        .unwrap();
        let init = RTCIceCandidate::from(&candidate).to_json().unwrap();
        self.pc.add_local_candidate(init).unwrap();
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())
            .unwrap();
    }

    /// Adds a microphone and a camera (one stream each) and offers them.
    pub(super) fn offer_media(&mut self, now: Instant) -> String {
        for (kind, mime, clock, channels) in [
            (RtpCodecKind::Audio, MIME_TYPE_OPUS, 48_000, 2),
            (RtpCodecKind::Video, MIME_TYPE_VP8, 90_000, 0),
        ] {
            let ssrc = rand::random::<u32>();
            let encoding = RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: mime.into(),
                    clock_rate: clock,
                    channels,
                    ..Default::default()
                },
                active: true,
                ..Default::default()
            };
            let video = kind == RtpCodecKind::Video;
            let name = if video { "camera" } else { "microphone" };
            let sender = self
                .pc
                .add_track(MediaStreamTrack::new(
                    "stream".into(),
                    name.into(),
                    name.into(),
                    kind,
                    vec![encoding],
                ))
                .unwrap();
            self.senders.push(OutStream {
                sender,
                ssrc,
                seq: 0,
                payload_type: 0,
                mid: None,
                video,
            });
        }
        self.add_candidate();
        let offer = self.pc.create_offer(None).unwrap();
        self.pc.set_local_description(now, offer).unwrap();
        self.pc.local_description().unwrap().sdp
    }

    pub(super) fn accept_answer(&mut self, now: Instant, sdp: String) {
        let answer = RTCSessionDescription::answer(sdp).unwrap();
        self.pc.set_remote_description(now, answer).unwrap();
        for s in &mut self.senders {
            let mid = self
                .pc
                .rtp_transceiver(RTCRtpTransceiverId::from(s.sender))
                .and_then(|t| t.mid().clone());
            let mut sender = self.pc.rtp_sender(s.sender).unwrap();
            let p = &sender.get_parameters().rtp_parameters;
            s.payload_type = p.codecs.first().map_or(0, |c| c.payload_type);
            let id = p
                .header_extensions
                .iter()
                .find(|h| h.uri == MID_URI)
                .map(|h| h.id as u8);
            s.mid = id.zip(mid.map(|m| Bytes::from(m.into_bytes())));
        }
    }

    pub(super) fn answer(&mut self, now: Instant, sdp: String) -> String {
        let offer = RTCSessionDescription::offer(sdp).unwrap();
        self.pc.set_remote_description(now, offer).unwrap();
        self.add_candidate();
        let answer = self.pc.create_answer(None).unwrap();
        self.pc.set_local_description(now, answer).unwrap();
        self.pc.local_description().unwrap().sdp
    }

    /// Sends one packet on each of its audio (`video` false) or video streams. Every video
    /// frame is a small VP8 keyframe, so any packet lets a subscriber start.
    pub(super) fn send(&mut self, now: Instant, video: bool, timestamp: u32) {
        for s in self.senders.iter_mut().filter(|s| s.video == video) {
            s.seq = s.seq.wrapping_add(1);
            let payload = if video {
                // Payload descriptor (start of partition), then a keyframe's frame tag, start
                // code and 320x180.
                let mut p = vec![
                    0x10, 0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xb4, 0x00,
                ];
                p.resize(600, 0x5a);
                Bytes::from(p)
            } else {
                Bytes::from(vec![0xf8; 80])
            };
            let mut header = rtp::header::Header {
                version: 2,
                marker: video,
                payload_type: s.payload_type,
                sequence_number: s.seq,
                timestamp,
                ssrc: s.ssrc,
                ..Default::default()
            };
            if let Some((id, mid)) = &s.mid {
                header.set_extension(*id, mid.clone()).unwrap();
            }
            let packet = rtp::packet::Packet { header, payload };
            // Refused only before the connection is up.
            if let Some(mut sender) = self.pc.rtp_sender(s.sender) {
                let _ = sender.write_rtp(now, packet);
            }
        }
    }

    pub(super) fn feed(&mut self, now: Instant, from: SocketAddr, data: BytesMut) {
        let input = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: data,
        };
        let _ = self.pc.handle_read(input);
        while let Some(TaggedRTCMessage { message, .. }) = self.pc.poll_read() {
            if let RTCMessage::RtpPacket(_, p) = message {
                let entry = self.received.entry(p.header.ssrc).or_default();
                entry.0 += 1;
                entry.1 = p.header.sequence_number;
                if !self.payload_types.contains(&p.header.payload_type) {
                    self.payload_types.push(p.header.payload_type);
                }
            }
        }
        while self.pc.poll_event().is_some() {}
    }

    pub(super) fn packets(&self) -> u64 {
        self.received.values().map(|(n, _)| n).sum()
    }
}
