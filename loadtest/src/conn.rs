//! One WebRTC peer connection (webrtc-rs's sans-IO `rtc`) on its own UDP socket, as a real
//! client has: offer/answer, the socket and timer plumbing, and what it received.
//!
//! The owner (a peer task) calls [`Conn::read_ready`] when the socket is readable,
//! [`Conn::handle_timeout`] at [`Conn::timeout`], then [`Conn::drain`] and [`Conn::flush`].
//! Datagrams are read in batches (up to [`READ_BATCH`] per wake-up) so that a busy peer costs
//! one task wake-up per batch rather than one per packet.

use crate::media::sent_at;
use crate::state::{Shared, lock};
use crate::stats::Arrival;
use anyhow::Context;
use bytes::BytesMut;
use rtc::interceptor::{
    NackResponderBuilder, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
};
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

pub const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub const RID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id";
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// Datagrams read per wake-up at most, so that one busy peer cannot starve the others.
pub const READ_BATCH: usize = 64;
/// Largest datagram read (media packets stay under 1,200 bytes; DTLS flights under 1,500).
const MAX_DATAGRAM: usize = 2048;

/// Opus and VP8, as most browsers send by default, with NACK and PLI feedback on video.
/// Publishing connections also offer the MID, RID and audio-level header extensions.
fn media_engine(sending: bool) -> Result<MediaEngine, rtc::shared::error::Error> {
    let mut me = MediaEngine::default();
    let feedback = ["", "pli"]
        .into_iter()
        .map(|p| RTCPFeedback {
            typ: "nack".into(),
            parameter: p.into(),
        })
        .collect();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.into(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
                rtcp_feedback: vec![],
            },
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_VP8.into(),
                clock_rate: 90_000,
                channels: 0,
                sdp_fmtp_line: "".into(),
                rtcp_feedback: feedback,
            },
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )?;
    if sending {
        for uri in [MID_URI, RID_URI] {
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
    }
    Ok(me)
}

/// What [`Conn::drain`] found that the peer acts on.
#[derive(Default)]
pub struct Drained {
    /// The connection reached `connected` just now.
    pub connected: bool,
    /// The far end asked for a keyframe (PLI or FIR).
    pub keyframe_requested: bool,
}

/// See the module documentation.
pub struct Conn {
    pub pc: RTCPeerConnection,
    socket: UdpSocket,
    local: SocketAddr,
    /// Whether our host candidate is in the local description yet.
    candidate_added: bool,
    /// Kind (video or not) of each received track, by track id, from `OnTrack`.
    kinds: HashMap<String, bool>,
    /// Kind by SSRC, learnt from `kinds` at a stream's first packet: the per-packet lookup
    /// then compares a number instead of hashing a track id.
    ssrc_kinds: Vec<(u32, bool)>,
    pub connected: bool,
    buf: Box<[u8; MAX_DATAGRAM]>,
}

impl Conn {
    /// Opens a socket on `bind` and a peer connection; `sending` for publishing connections.
    pub async fn open(bind: IpAddr, sending: bool) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(bind, 0))
            .await
            .context("binding a UDP socket (out of file descriptors or ports?)")?;
        let local = socket.local_addr()?;
        let registry = if sending {
            Registry::new()
                .with(Slot::SenderReport, SenderReportBuilder::new().build())
                .with(Slot::NackResponder, NackResponderBuilder::new().build())
        } else {
            Registry::new().with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
        };
        // Behave as a browser does, so that join times measure the server rather than the
        // client stack: connectivity checks paced at RFC 8445's Ta of 50 ms (webrtc-rs waits
        // 200 ms between checks) for up to 5 s per candidate pair (webrtc-rs gives up after
        // 1.4 s; Chrome after about 5 s, which a busy server needs), and an answer takes
        // the DTLS client role (`setup:active`), as Chrome and Firefox do. webrtc-rs then sends
        // its ClientHello at the next ICE tick, within 50 ms of ICE completing; sooner would
        // risk a full-ICE server (Janus) not being ready yet, and webrtc-rs retransmits a lost
        // DTLS flight only after a whole second.
        let settings = SettingEngineBuilder::new()
            .with_ice_connection_attempts(Some(Duration::from_millis(50)), Some(100))
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .build();
        let pc = RTCPeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_media_engine(media_engine(sending)?)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        Ok(Self {
            pc,
            socket,
            local,
            candidate_added: false,
            kinds: HashMap::new(),
            ssrc_kinds: Vec::new(),
            connected: false,
            buf: Box::new([0; MAX_DATAGRAM]),
        })
    }

    /// Adds a receive-only audio and video section, for offering to play (WHEP).
    pub fn add_receivers(&mut self) -> anyhow::Result<()> {
        for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
            self.pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )?;
        }
        Ok(())
    }

    /// Our one host candidate, then end-of-candidates: nothing is trickled later.
    fn add_candidate(&mut self) -> anyhow::Result<()> {
        if self.candidate_added {
            return Ok(());
        }
        let candidate = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".into(),
                address: self.local.ip().to_string(),
                port: self.local.port(),
                component: 1,
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        self.pc
            .add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
        self.pc
            .add_local_candidate(RTCIceCandidateInit::default())?;
        self.candidate_added = true;
        Ok(())
    }

    fn local_sdp(&self) -> anyhow::Result<String> {
        Ok(self
            .pc
            .local_description()
            .context("no local description")?
            .sdp)
    }

    /// Creates our offer.
    pub fn offer(&mut self) -> anyhow::Result<String> {
        self.add_candidate()?;
        let offer = self.pc.create_offer(None)?;
        self.pc.set_local_description(Instant::now(), offer)?;
        self.local_sdp()
    }

    /// Applies the far end's answer to our offer.
    pub fn accept_answer(&mut self, sdp: String) -> anyhow::Result<()> {
        let answer = RTCSessionDescription::answer(sdp).context("parsing the answer")?;
        self.pc
            .set_remote_description(Instant::now(), answer)
            .context("applying the answer")?;
        Ok(())
    }

    /// Answers the far end's offer (first or renegotiation).
    pub fn answer(&mut self, sdp: String) -> anyhow::Result<String> {
        let offer = RTCSessionDescription::offer(sdp).context("parsing the offer")?;
        self.pc
            .set_remote_description(Instant::now(), offer)
            .context("applying the offer")?;
        self.add_candidate()?;
        let answer = self.pc.create_answer(None)?;
        self.pc.set_local_description(Instant::now(), answer)?;
        self.local_sdp()
    }

    /// The socket, to wait on its readiness (`UdpSocket::readable`) without borrowing the
    /// connection, which is not `Sync`.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Reads the datagrams waiting on the socket (a batch at most) into the connection.
    pub fn read_ready(&mut self) -> io::Result<()> {
        for _ in 0..READ_BATCH {
            match self.socket.try_recv_from(&mut self.buf[..]) {
                Ok((n, from)) => {
                    let input = TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: self.local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(&self.buf[..n]),
                    };
                    // A datagram the connection cannot use (garbage, a stray packet) is
                    // dropped, as a browser would.
                    let _ = self.pc.handle_read(input);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                // ICMP port unreachable from a peer that went away surfaces here on Linux.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// When the connection next needs [`Conn::handle_timeout`].
    pub fn timeout(&mut self) -> Option<Instant> {
        self.pc.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Errors here are the connection's own failures; they surface as a state change.
        let _ = self.pc.handle_timeout(now);
    }

    /// Takes the connection's events and received packets: packets are measured into the
    /// peer's state; a failed connection is an error.
    pub fn drain(&mut self, shared: &Shared) -> anyhow::Result<Drained> {
        let mut out = Drained::default();
        // Events first: a track opened by a packet is known before that packet is read.
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                    RTCPeerConnectionState::Connected if !self.connected => {
                        self.connected = true;
                        out.connected = true;
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        anyhow::bail!("peer connection {s}");
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    if let Some(r) = self.pc.rtp_receiver(init.receiver_id) {
                        let video = r.track().kind() == RtpCodecKind::Video;
                        self.kinds.insert(init.track_id, video);
                    }
                }
                _ => {}
            }
        }
        let mut state = None;
        while let Some(TaggedRTCMessage { now, message }) = self.pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(track, p) => {
                    let ssrc = p.header.ssrc;
                    let video = match self.ssrc_kinds.iter().find(|(s, _)| *s == ssrc) {
                        Some((_, video)) => *video,
                        None => {
                            // A track not announced yet: Opus is payload type 111 in every
                            // offer we make or have seen; anything else is taken for video.
                            let video = self
                                .kinds
                                .get(&track)
                                .copied()
                                .unwrap_or(p.header.payload_type != 111);
                            self.ssrc_kinds.push((ssrc, video));
                            video
                        }
                    };
                    let s = state.get_or_insert_with(|| lock(shared));
                    s.reception.on_packet(Arrival {
                        now,
                        ssrc,
                        video,
                        seq: p.header.sequence_number,
                        rtp_time: p.header.timestamp,
                        bytes: p.payload.len(),
                        marker: p.header.marker,
                        sent: sent_at(&p.payload, video),
                    });
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    out.keyframe_requested |= packets.iter().any(|p| {
                        p.as_any().is::<PictureLossIndication>()
                            || p.as_any().is::<FullIntraRequest>()
                    });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Sends what the connection has queued.
    pub async fn flush(&mut self) {
        while let Some(t) = self.pc.poll_write() {
            // UDP: a send that fails is a lost packet, which the measurements will show.
            let _ = self.socket.send_to(&t.message, t.transport.peer_addr).await;
        }
    }

    /// Closes the connection and sends what that queued (DTLS close notify).
    pub async fn close(&mut self) {
        let _ = self.pc.close();
        self.flush().await;
    }
}
