//! One simulated participant: a real WebRTC peer (ICE, DTLS, SRTP from webrtc-rs's sans-IO
//! core) on its own UDP socket, driven by one tokio task.
//!
//! A publisher sends synthetic audio and video once connected and answers keyframe requests; a
//! subscriber measures what it receives. Both record how long joining took.

use crate::media::{AudioSource, VideoProfile, VideoSource, sent_at};
use crate::stats::StreamStats;
use crate::target::Target;
use bytes::BytesMut;
use rtc::interceptor::{
    NackResponderBuilder, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

/// What a peer does.
#[derive(Clone, Debug)]
pub enum Role {
    Publisher {
        video: Option<VideoProfile>,
        audio_bps: Option<u32>,
    },
    Subscriber,
}

/// How a peer is doing; shared with the controller, which reads it for progress and reports.
#[derive(Clone, Default)]
pub struct PeerState {
    pub started: Option<Instant>,
    pub connected_at: Option<Instant>,
    pub failed: Option<String>,
    pub video: StreamStats,
    pub audio: StreamStats,
    pub packets_sent: u64,
    pub keyframe_requests: u64,
}

impl PeerState {
    pub fn join_time(&self) -> Option<Duration> {
        Some(self.connected_at?.saturating_duration_since(self.started?))
    }

    /// From starting to join until the first media packet.
    pub fn first_media(&self) -> Option<Duration> {
        let first = [self.video.first_packet_at, self.audio.first_packet_at]
            .into_iter()
            .flatten()
            .min()?;
        Some(first.saturating_duration_since(self.started?))
    }
}

pub type Shared = Arc<Mutex<PeerState>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, PeerState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// Codecs the simulated peers use: Opus and VP8, as most browsers send by default.
fn media_engine() -> Result<MediaEngine, rtc::shared::error::Error> {
    let mut me = MediaEngine::default();
    let feedback = vec![
        RTCPFeedback {
            typ: "nack".into(),
            parameter: "".into(),
        },
        RTCPFeedback {
            typ: "nack".into(),
            parameter: "pli".into(),
        },
    ];
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
    Ok(me)
}

struct Outgoing {
    sender: RTCRtpSenderId,
    ssrc: u32,
    seq: u16,
    payload_type: u8,
}

/// Runs one peer until `stop` turns true or the connection fails.
pub async fn run(
    id: usize,
    role: Role,
    target: Arc<Target>,
    bind: std::net::IpAddr,
    shared: Shared,
    mut stop: watch::Receiver<bool>,
) {
    lock(&shared).started = Some(Instant::now());
    let result = drive(id, role, &target, bind, &shared, &mut stop).await;
    if let Err(e) = result {
        lock(&shared).failed = Some(format!("{e:#}"));
    }
}

async fn drive(
    id: usize,
    role: Role,
    target: &Target,
    bind: std::net::IpAddr,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::new(bind, 0)).await?;
    let local = socket.local_addr()?;
    let now = Instant::now();
    let publisher = matches!(role, Role::Publisher { .. });
    let mut registry = Registry::new();
    registry = if publisher {
        registry
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            .with(Slot::NackResponder, NackResponderBuilder::new().build())
    } else {
        registry.with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
    };
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_media_engine(media_engine()?)
        .with_interceptor_registry(registry)
        .build(now)?;

    let mut video_out = None;
    let mut audio_out = None;
    let (mut video_src, mut audio_src) = (None, None);
    match &role {
        Role::Publisher { video, audio_bps } => {
            let mut add = |kind, mime: &str, clock, channels| -> anyhow::Result<Outgoing> {
                let ssrc = rand::random::<u32>();
                let sender = pc.add_track(MediaStreamTrack::new(
                    format!("peer{id}"),
                    format!("peer{id}-{mime}"),
                    format!("peer{id}-{mime}"),
                    kind,
                    vec![RTCRtpEncodingParameters {
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
                    }],
                ))?;
                Ok(Outgoing {
                    sender,
                    ssrc,
                    seq: rand::random(),
                    payload_type: 0,
                })
            };
            if let Some(bps) = audio_bps {
                audio_out = Some(add(RtpCodecKind::Audio, MIME_TYPE_OPUS, 48_000, 2)?);
                audio_src = Some(AudioSource::new(*bps));
            }
            if let Some(profile) = video {
                video_out = Some(add(RtpCodecKind::Video, MIME_TYPE_VP8, 90_000, 0)?);
                video_src = Some(VideoSource::new(*profile));
            }
        }
        Role::Subscriber => {
            for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
                pc.add_transceiver_from_kind(
                    kind,
                    Some(RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    }),
                )?;
            }
        }
    }
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".into(),
            address: local.ip().to_string(),
            port: local.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&candidate).to_json()?)?;
    pc.add_local_candidate(RTCIceCandidateInit::default())?;
    let offer = pc.create_offer(None)?;
    pc.set_local_description(Instant::now(), offer)?;
    let sdp = pc
        .local_description()
        .ok_or_else(|| anyhow::anyhow!("no local description"))?
        .sdp;
    let session = target.start(id, publisher, sdp).await?;
    let answer = rtc::peer_connection::sdp::RTCSessionDescription::answer(session.answer.clone())?;
    pc.set_remote_description(Instant::now(), answer)?;
    for out in [&mut video_out, &mut audio_out].into_iter().flatten() {
        out.payload_type = pc
            .rtp_sender(out.sender)
            .and_then(|mut s| {
                s.get_parameters()
                    .rtp_parameters
                    .codecs
                    .first()
                    .map(|c| c.payload_type)
            })
            .unwrap_or(96);
    }

    let result = event_loop(
        &mut pc,
        &socket,
        local,
        shared,
        stop,
        (&mut video_out, &mut video_src),
        (&mut audio_out, &mut audio_src),
    )
    .await;
    let _ = pc.close();
    flush(&mut pc, &socket).await;
    target.end(&session).await;
    result
}

async fn flush(pc: &mut RTCPeerConnection, socket: &UdpSocket) {
    while let Some(t) = pc.poll_write() {
        let _ = socket.send_to(&t.message, t.transport.peer_addr).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn event_loop(
    pc: &mut RTCPeerConnection,
    socket: &UdpSocket,
    local: SocketAddr,
    shared: &Shared,
    stop: &mut watch::Receiver<bool>,
    video: (&mut Option<Outgoing>, &mut Option<VideoSource>),
    audio: (&mut Option<Outgoing>, &mut Option<AudioSource>),
) -> anyhow::Result<()> {
    let (video_out, video_src) = video;
    let (audio_out, audio_src) = audio;
    let mut buf = vec![0u8; 2048];
    let mut kinds: HashMap<String, RtpCodecKind> = HashMap::new();
    let mut connected = false;
    let far = Duration::from_secs(3600);
    let mut next_video = Instant::now() + far;
    let mut next_audio = Instant::now() + far;
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        flush(pc, socket).await;
        while let Some(event) = pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                    RTCPeerConnectionState::Connected if !connected => {
                        connected = true;
                        let now = Instant::now();
                        lock(shared).connected_at = Some(now);
                        next_video = now;
                        next_audio = now;
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        anyhow::bail!("peer connection {s}");
                    }
                    _ => {}
                },
                RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                    if let Some(r) = pc.rtp_receiver(init.receiver_id) {
                        kinds.insert(init.track_id, r.track().kind());
                    }
                }
                _ => {}
            }
        }
        while let Some(TaggedRTCMessage { now, message }) = pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(track, p) => {
                    let video = kinds.get(&track) == Some(&RtpCodecKind::Video);
                    let sent = sent_at(&p.payload, video);
                    let mut s = lock(shared);
                    let stream = if video { &mut s.video } else { &mut s.audio };
                    stream.on_packet(
                        now,
                        p.header.sequence_number,
                        p.header.timestamp,
                        p.payload.len(),
                        video && p.header.marker,
                        sent,
                    );
                }
                RTCMessage::RtcpPacket(_, packets) => {
                    if packets
                        .iter()
                        .any(|p| p.as_any().downcast_ref::<PictureLossIndication>().is_some())
                        && let Some(v) = video_src.as_mut()
                    {
                        v.request_keyframe();
                        lock(shared).keyframe_requests += 1;
                    }
                }
                _ => {}
            }
        }
        if !connected && Instant::now() > connect_deadline {
            anyhow::bail!("did not connect within 30 s");
        }
        let now = Instant::now();
        if connected {
            if now >= next_video
                && let (Some(out), Some(src)) = (video_out.as_mut(), video_src.as_mut())
            {
                let frame = src.next_frame(now);
                let n = frame.len() as u64;
                for m in frame {
                    send(pc, out, m, now)?;
                }
                lock(shared).packets_sent += n;
                next_video += src.frame_interval();
                if next_video < now {
                    next_video = now + src.frame_interval();
                }
                continue;
            }
            if now >= next_audio
                && let (Some(out), Some(src)) = (audio_out.as_mut(), audio_src.as_mut())
            {
                let m = src.next_packet(now);
                send(pc, out, m, now)?;
                lock(shared).packets_sent += 1;
                next_audio += AudioSource::INTERVAL;
                if next_audio < now {
                    next_audio = now + AudioSource::INTERVAL;
                }
                continue;
            }
        }
        let mut wake = pc.poll_timeout().unwrap_or(now + far).min(connect_deadline);
        if connected && video_out.is_some() {
            wake = wake.min(next_video);
        }
        if connected && audio_out.is_some() {
            wake = wake.min(next_audio);
        }
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                let input = TaggedBytesMut {
                    now: Instant::now(),
                    transport: TransportContext {
                        local_addr: local,
                        peer_addr: from,
                        ecn: None,
                        transport_protocol: TransportProtocol::UDP,
                    },
                    message: BytesMut::from(&buf[..n]),
                };
                let _ = pc.handle_read(input);
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                let _ = pc.handle_timeout(Instant::now());
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return Ok(());
                }
            }
        }
    }
}

fn send(
    pc: &mut RTCPeerConnection,
    out: &mut Outgoing,
    m: crate::media::MediaPacket,
    now: Instant,
) -> anyhow::Result<()> {
    out.seq = out.seq.wrapping_add(1);
    let packet = rtp::packet::Packet {
        header: rtp::header::Header {
            version: 2,
            marker: m.marker,
            payload_type: out.payload_type,
            sequence_number: out.seq,
            timestamp: m.timestamp,
            ssrc: out.ssrc,
            ..Default::default()
        },
        payload: m.payload,
    };
    let mut sender = pc
        .rtp_sender(out.sender)
        .ok_or_else(|| anyhow::anyhow!("sender gone"))?;
    sender.write_rtp(now, packet)?;
    Ok(())
}
