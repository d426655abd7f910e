//! One WebRTC peer connection of a participant, driven through webrtc-rs's sans-IO core.
//!
//! The node is an ICE-lite endpoint: it announces host candidates on its worker's shared UDP
//! socket, never sends connectivity checks itself, and learns each peer's address from the
//! checks the peer sends. Every peer connection is created with ufrag and password chosen here
//! so that [`demux`](super::demux) can route a peer's first STUN packet to it.
//!
//! Interceptors are chosen per direction. Publisher connections get NACK generation (loss on the
//! first hop is repaired by the publisher, its retransmissions put back by
//! [`repair`](super::repair)), receiver reports and transport-wide congestion
//! control feedback (so the browser's bandwidth estimate can ramp up). Subscriber connections
//! get none: the forwarding core answers NACKs from its per-track cache and writes sender
//! reports itself, so no per-subscriber copy of any packet is kept.

use rand::RngExt;
use rtc::crypto::SignatureScheme;
use rtc::interceptor::{
    NackGeneratorBuilder, ReceiverReportBuilder, Registry, Slot, TwccReceiverBuilder,
};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_RTX, MIME_TYPE_VP8, MIME_TYPE_VP9,
    MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use std::net::SocketAddr;
use std::time::Instant;

/// The DTLS certificate of a media worker's peer connections: made once per worker, not
/// per peer connection (an ECDSA key and a self-signature cost every join a millisecond of
/// the worker's time otherwise). Browsers reuse theirs the same way; a peer connection is
/// authenticated by the fingerprint in its SDP, not by the certificate being fresh.
pub fn worker_certificate() -> Result<RTCCertificate, rtc::shared::error::Error> {
    let provider = rtc::crypto::default_provider()
        .map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?;
    let params = CertificateParams::new(vec!["sfu-node".to_owned()])
        .map_err(|e| rtc::shared::error::Error::Other(e.to_string()))?;
    RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
}

/// Which way media flows on a peer connection, from the node's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The participant publishes; the node receives.
    Publish,
    /// The participant subscribes; the node sends.
    Subscribe,
}

/// ICE credentials of one peer connection.
#[derive(Clone, Debug)]
pub struct IceCredentials {
    pub ufrag: String,
    pub pwd: String,
}

impl IceCredentials {
    /// Random credentials with the lengths RFC 8839 requires (ufrag ≥ 4, pwd ≥ 22 characters).
    pub fn random() -> Self {
        Self {
            ufrag: random_alnum(16),
            pwd: random_alnum(32),
        }
    }
}

fn random_alnum(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The payload type negotiated for RED among `codecs`, if any.
pub fn red_payload_type(codecs: &[RTCRtpCodecParameters]) -> Option<u8> {
    codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(RED_MIME))
        .map(|c| c.payload_type)
}

/// Video codecs the node negotiates, in order of preference: (MIME type, fmtp, payload type);
/// each has an RTX codec at the next payload type.
const VIDEO_CODECS: [(&str, &str, u8); 5] = [
    (MIME_TYPE_VP8, "", 96),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        102,
    ),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        104,
    ),
    (MIME_TYPE_VP9, "profile-id=0", 98),
    (MIME_TYPE_AV1, "level-idx=5;profile=0;tier=0", 45),
];

fn codec(
    mime: &str,
    clock_rate: u32,
    channels: u16,
    fmtp: &str,
    payload_type: u8,
    rtcp_feedback: Vec<RTCPFeedback>,
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback,
        },
        payload_type,
    }
}

fn video_feedback() -> Vec<RTCPFeedback> {
    [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .into_iter()
        .map(|(typ, parameter)| RTCPFeedback {
            typ: typ.into(),
            parameter: parameter.into(),
        })
        .collect()
}

/// Every codec the node negotiates, with its kind, in order of preference.
fn codecs() -> Vec<(RtpCodecKind, RTCRtpCodecParameters)> {
    // RED (RFC 2198), preferred over plain Opus (as LiveKit does): a lost packet's audio rides
    // in the next one. Forwarded as it is to subscribers that negotiate it, as its primary Opus
    // block to the others.
    let mut all = vec![
        (
            RtpCodecKind::Audio,
            codec(RED_MIME, 48_000, 2, "111/111", 63, vec![]),
        ),
        (
            RtpCodecKind::Audio,
            codec(
                MIME_TYPE_OPUS,
                48_000,
                2,
                "minptime=10;useinbandfec=1",
                111,
                vec![],
            ),
        ),
    ];
    for (mime, fmtp, pt) in VIDEO_CODECS {
        all.push((
            RtpCodecKind::Video,
            codec(mime, 90_000, 0, fmtp, pt, video_feedback()),
        ));
        all.push((
            RtpCodecKind::Video,
            codec(
                MIME_TYPE_RTX,
                90_000,
                0,
                &format!("apt={pt}"),
                pt + 1,
                vec![],
            ),
        ));
    }
    all
}

/// Codecs the node negotiates, in order of preference.
fn register_codecs(me: &mut MediaEngine) -> Result<(), rtc::shared::error::Error> {
    for (kind, c) in codecs() {
        me.register_codec(c, kind)?;
    }
    Ok(())
}

/// The codecs a subscriber's media section for a track published with `mime` offers: that
/// codec (every profile of it) and its RTX, or for audio RED and Opus. Offering only these,
/// rather than every codec the node knows, keeps each subscriber's descriptions (held four
/// times over by webrtc-rs) a fraction of the size: a large room's audience pays for them once
/// per member.
pub fn codecs_for(mime: &str) -> Vec<RTCRtpCodecParameters> {
    let all = codecs();
    let wanted: Vec<u8> = all
        .iter()
        .filter(|(_, c)| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|(_, c)| c.payload_type)
        .collect();
    let audio = mime.eq_ignore_ascii_case(MIME_TYPE_OPUS) || mime.eq_ignore_ascii_case(RED_MIME);
    all.into_iter()
        .map(|(_, c)| c)
        .filter(|c| {
            let rtx_of = c
                .rtp_codec
                .sdp_fmtp_line
                .strip_prefix("apt=")
                .and_then(|pt| pt.parse::<u8>().ok());
            wanted.contains(&c.payload_type)
                || rtx_of.is_some_and(|pt| wanted.contains(&pt))
                || (audio && c.rtp_codec.mime_type.eq_ignore_ascii_case(RED_MIME))
                || (audio && c.rtp_codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_OPUS))
        })
        .collect()
}

/// MIME type of RED audio.
pub const RED_MIME: &str = "audio/red";
const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
const RRID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id";
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
const TWCC_URI: &str = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// Builds a peer connection for one direction.
pub fn build(
    direction: Direction,
    credentials: &IceCredentials,
    certificate: &RTCCertificate,
    repair: &super::repair::RepairMetrics,
    now: Instant,
) -> Result<RTCPeerConnection, rtc::shared::error::Error> {
    let mut me = MediaEngine::default();
    register_codecs(&mut me)?;
    let mut registry = Registry::new();
    // Transport-wide congestion control both ways: publishers get TWCC reports from us (the
    // TWCC receiver below); subscribers get transport-wide sequence numbers on every packet
    // we send (the forwarding core writes them) and send TWCC reports back.
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: TWCC_URI.into(),
            },
            kind,
            None,
        )?;
        me.register_feedback(
            RTCPFeedback {
                typ: "transport-cc".into(),
                parameter: "".into(),
            },
            kind,
        );
    }
    if direction == Direction::Publish {
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            me.register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: MID_URI.into(),
                },
                kind,
                None,
            )?;
        }
        for uri in [RID_URI, RRID_URI] {
            me.register_header_extension(
                RTCRtpHeaderExtensionCapability { uri: uri.into() },
                RtpCodecKind::Video,
                None,
            )?;
        }
        me.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: AUDIO_LEVEL_URI.into(),
            },
            RtpCodecKind::Audio,
            None,
        )?;
        // Loss on the way in is asked for again (10 times at most, every 100 ms), and the
        // retransmissions of simulcast layers are put back into their streams (see
        // `super::repair`: webrtc-rs drops them otherwise).
        registry = registry
            .with(
                Slot::from(super::repair::REPAIR_SLOT),
                super::repair::RtxRepair::new(repair.clone()),
            )
            .with(
                Slot::NackGenerator,
                NackGeneratorBuilder::new()
                    .with_max_nacks_per_packet(10)
                    .build(),
            )
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build());
    }
    if direction == Direction::Subscribe {
        // REMB for subscribers without TWCC.
        me.register_feedback(
            RTCPFeedback {
                typ: "goog-remb".into(),
                parameter: "".into(),
            },
            RtpCodecKind::Video,
        );
    }
    // Without the tap webrtc-rs would consume every inbound RTCP packet itself.
    registry = registry.with(
        Slot::from(super::rtcp_tap::RTCP_TAP_SLOT),
        super::rtcp_tap::RtcpTap::default(),
    );
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(credentials.ufrag.clone(), credentials.pwd.clone())
        // As ICE-lite answerer we wait for the browser's DTLS ClientHello.
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .build();
    RTCPeerConnectionBuilder::new()
        .with_configuration(
            RTCConfigurationBuilder::new()
                .with_certificates(vec![certificate.clone()])
                .build(),
        )
        .with_setting_engine(settings)
        .with_media_engine(me)
        .with_interceptor_registry(registry)
        .build(now)
}

/// What a subscriber connection negotiated for congestion control (after offer/answer).
pub fn sink_params(pc: &mut RTCPeerConnection) -> sfu_core::SinkParams {
    let mut params = sfu_core::SinkParams::default();
    let ids: Vec<_> = pc.get_transceivers().collect();
    let senders: Vec<_> = ids
        .into_iter()
        .filter_map(|t| pc.rtp_transceiver(t).and_then(|t| t.sender()))
        .collect();
    for sender in senders {
        let Some(mut s) = pc.rtp_sender(sender) else {
            continue;
        };
        let p = &s.get_parameters().rtp_parameters;
        if let Some(h) = p.header_extensions.iter().find(|h| h.uri == TWCC_URI) {
            params.twcc_ext = u8::try_from(h.id).ok().filter(|id| (1..=14).contains(id));
        }
        params.remb |= p.codecs.iter().any(|c| {
            c.rtp_codec
                .rtcp_feedback
                .iter()
                .any(|f| f.typ == "goog-remb")
        });
    }
    params
}

/// Announces the worker's socket as host candidates, then ends gathering, so the local
/// description carries every candidate (no trickle from our side is needed).
pub fn add_host_candidates(
    pc: &mut RTCPeerConnection,
    addrs: &[SocketAddr],
) -> Result<(), rtc::shared::error::Error> {
    for addr in addrs {
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: addr.ip().to_string(),
                port: addr.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    }
    pc.add_local_candidate(RTCIceCandidateInit::default())
}
