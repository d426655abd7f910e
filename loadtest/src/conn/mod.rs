//! One WebRTC peer connection (webrtc-rs's sans-IO `rtc`) on its own UDP socket, as a real
//! client has: offer/answer, the socket and timer plumbing, and what it received.
//!
//! The owner (a peer task) calls [`Conn::read_ready`] when the socket is readable,
//! [`Conn::handle_timeout`] at [`Conn::timeout`], then, on every turn of its loop,
//! [`Conn::drain`], [`Conn::flush`] and [`Conn::timeout`] in that order. Datagrams are read in
//! batches ([`stamped`], up to [`READ_BATCH`] per wake-up) so that a busy peer costs one task
//! wake-up per batch rather than one per packet.
//!
//! A light receiving connection ([`crate::light`]) passes the peer connection only what it
//! must (STUN, DTLS, RTCP and a sample of the media) and measures the rest from RTP headers.
//! Once connected it no longer wakes for every datagram: its socket leaves tokio's reactor
//! (which would otherwise handle an event per datagram) and is read when a timer says
//! ([`crate::read_pace`]: as rarely as its receive buffer allows), with arrival times from the
//! kernel, so the wake-up, the poll of everything the task waits on and the read that finds
//! the socket empty are paid per batch instead of per packet. Asking a peer connection anything (events,
//! packets, its timeout) costs a pass over its whole handler pipeline, so a light connection
//! asks only when it passed it something since it last asked (a sans-IO peer connection
//! changes only when called), and once connected runs its timers once a second
//! ([`LIGHT_TICK`]).
//!
//! A light connection goes further (toward this project's node, ICE-lite, and Janus): once the
//! session descriptions are agreed, its own [`Transport`] (ICE checks, DTLS, SRTP) takes every
//! datagram, and the peer connection only writes and reads session descriptions; it never
//! sees a datagram nor runs a timer, which keeps it small ([`crate::transport`]).

use crate::light::{Light, Verdict};
use crate::media::sent_at;
use crate::read_pace::ReadPace;
use crate::stamped;
use crate::state::{PeerState, Shared, lock};
use crate::stats::Arrival;
use crate::transport::{Agreed, Transport, TransportEvent};
use anyhow::Context;
use bytes::BytesMut;
use rtc::interceptor::{
    NackResponderBuilder, ReceiverReportBuilder, Registry, SenderReportBuilder, Slot,
};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
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
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

mod engine;
mod socket;

use engine::media_engine;
pub use engine::{AUDIO_LEVEL_URI, MID_URI, RID_URI};
use socket::Socket;

/// Datagrams read per wake-up at most, so that one busy peer cannot starve the others.
pub const READ_BATCH: usize = 64;
/// How often a connected light connection runs its peer connection's timers. The only one
/// left then is ICE's: webrtc-rs's agent ticks every 200 ms to see whether its keepalive
/// (every 2 s) is due, and a tick costs a pass over the pipeline; once a second keeps the
/// keepalive within 3 s, well inside consent freshness's 30 s (RFC 7675).
pub const LIGHT_TICK: Duration = Duration::from_secs(1);

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
    /// Boxed: 8.5 KB that would otherwise sit inside every peer task's future, once for each
    /// connection the peer might have.
    pub pc: Box<RTCPeerConnection>,
    socket: Socket,
    local: SocketAddr,
    /// Whether our host candidate is in the local description yet.
    candidate_added: bool,
    /// Kind (video or not) of each received track, by track id, from `OnTrack`.
    kinds: HashMap<String, bool>,
    /// Kind by SSRC, learnt from `kinds` at a stream's first packet: the per-packet lookup
    /// then compares a number instead of hashing a track id.
    ssrc_kinds: Vec<(u32, bool)>,
    pub connected: bool,
    /// The light receiver's state, on a light receiving connection.
    light: Option<Box<Light>>,
    /// Whether the peer connection was called since [`Conn::timeout`] last asked it
    /// (light connections only: a full one is called for every datagram anyway).
    stirred: bool,
    /// The peer connection's timeout when it was last asked.
    pc_timeout: Option<Instant>,
    /// A light connection's read schedule: once connected, it reads its socket on this
    /// timer, not on readiness.
    pace: Option<ReadPace>,
    /// When a connected light connection last ran its peer connection's timers.
    last_tick: Option<Instant>,
    /// Whether a light connection asks for segmented reads once connected.
    segments: bool,
    /// A light connection's own transport, once the descriptions are agreed.
    transport: Option<Box<Transport>>,
    /// What the transport decrypted that [`Conn::take_reads`] has yet to take.
    transport_events: Vec<(Instant, TransportEvent)>,
    /// The transport connected, or the server closed it, and [`Conn::drain`] has yet to say.
    transport_up: bool,
    transport_closed: bool,
}

impl Conn {
    /// Opens a socket on `bind` and a peer connection; `sending` for publishing connections,
    /// `light` for a light receiving one, which reads segmented messages once connected if
    /// `segments` ([`stamped`]).
    pub async fn open(
        bind: IpAddr,
        sending: bool,
        light: bool,
        segments: bool,
    ) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(bind, 0))
            .await
            .context("binding a UDP socket (out of file descriptors or ports?)")?;
        let local = socket.local_addr()?;
        let pace = if light {
            stamped::enable(socket.as_raw_fd()).context("asking for receive timestamps")?;
            Some(ReadPace::for_socket(socket.as_raw_fd()).context("sizing the receive buffer")?)
        } else {
            None
        };
        let registry = if sending {
            Registry::new()
                .with(Slot::SenderReport, SenderReportBuilder::new().build())
                .with(Slot::NackResponder, NackResponderBuilder::new().build())
        } else if light {
            // It would see only the sample; the light receiver reports instead.
            Registry::new()
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
        let mut builder = RTCPeerConnectionBuilder::new();
        if light {
            // The certificate its own transport presents ([`crate::transport`]).
            let certificate = crate::transport::certificate()?.clone();
            builder = builder.with_configuration(
                RTCConfigurationBuilder::new()
                    .with_certificates(vec![certificate])
                    .build(),
            );
        }
        let pc = builder
            .with_setting_engine(settings)
            .with_media_engine(media_engine(sending)?)
            .with_interceptor_registry(registry)
            .build(Instant::now())?;
        Ok(Self {
            pc: Box::new(pc),
            socket: Socket::Reactor(socket),
            local,
            candidate_added: false,
            kinds: HashMap::new(),
            ssrc_kinds: Vec::new(),
            connected: false,
            light: light.then(Box::default),
            segments,
            transport: None,
            transport_events: Vec::new(),
            transport_up: false,
            transport_closed: false,
            stirred: true,
            pc_timeout: None,
            pace,
            last_tick: None,
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
        self.stirred = true;
        self.add_candidate()?;
        let offer = self.pc.create_offer(None)?;
        self.pc.set_local_description(Instant::now(), offer)?;
        self.local_sdp()
    }

    /// Applies the far end's answer to our offer.
    pub fn accept_answer(&mut self, sdp: String) -> anyhow::Result<()> {
        self.stirred = true;
        if let Some(light) = &mut self.light {
            light.negotiated(&sdp);
        }
        let local = self.local_sdp()?;
        self.take_transport(&local, &sdp, true)?;
        let answer = RTCSessionDescription::answer(sdp).context("parsing the answer")?;
        self.pc
            .set_remote_description(Instant::now(), answer)
            .context("applying the answer")?;
        Ok(())
    }

    /// A light connection whose descriptions are agreed (`offered`: `local` is our offer)
    /// takes its own transport from here on if it can ([`Agreed::from_sdp`]; once:
    /// renegotiations change neither ICE nor DTLS).
    fn take_transport(&mut self, local: &str, remote: &str, offered: bool) -> anyhow::Result<()> {
        if self.light.is_none() || self.transport.is_some() {
            return Ok(());
        }
        let agreed = Agreed::from_sdp(local, remote, offered).context("the light transport")?;
        if let Some(agreed) = agreed {
            let t = Transport::new(self.local, agreed, Instant::now())?;
            self.transport = Some(Box::new(t));
        }
        Ok(())
    }

    /// Answers the far end's offer (first or renegotiation).
    pub fn answer(&mut self, sdp: String) -> anyhow::Result<String> {
        self.stirred = true;
        let offer = RTCSessionDescription::offer(sdp.clone()).context("parsing the offer")?;
        self.pc
            .set_remote_description(Instant::now(), offer)
            .context("applying the offer")?;
        self.add_candidate()?;
        let answer = self.pc.create_answer(None)?;
        self.pc.set_local_description(Instant::now(), answer)?;
        let local = self.local_sdp()?;
        if let Some(light) = &mut self.light {
            light.negotiated(&local);
        }
        self.take_transport(&local, &sdp, false)?;
        Ok(local)
    }

    /// The socket to wait on for readiness, without borrowing the connection, which is not
    /// `Sync`; none once a light connection reads on its timer.
    pub fn readiness(&self) -> Option<&UdpSocket> {
        self.socket.readiness()
    }

    /// A light connection that just connected: its socket leaves the reactor (the reactor
    /// closes its descriptor; a duplicate keeps the socket open) and is read on a timer,
    /// segmented if asked and the kernel can. Segments are asked for only now: a message of
    /// them would not fit a read at readiness, and no media comes before DTLS is done.
    fn read_on_timer(&mut self, now: Instant) -> io::Result<()> {
        self.socket.read_on_timer(self.segments)?;
        if let Some(pace) = &mut self.pace {
            pace.start(now);
        }
        self.last_tick = Some(now);
        Ok(())
    }

    /// Reads the datagrams waiting on the socket (a batch at most) into the connection; a
    /// light connection measures most media packets into `shared` from their header instead.
    pub fn read_ready(&mut self, shared: &Shared) -> io::Result<()> {
        self.read(shared, READ_BATCH).map(|_| ())
    }

    /// Reads up to about `limit` datagrams (whole batches); returns how many it read.
    fn read(&mut self, shared: &Shared, limit: usize) -> io::Result<usize> {
        stamped::with_batch(|batch| {
            let mut state = None;
            let mut read = 0;
            while read < limit {
                let n = self.socket.recv(batch)?;
                for d in batch.datagrams() {
                    self.on_datagram(d, shared, &mut state);
                    read += 1;
                }
                if n < stamped::slots(self.socket.mode()) {
                    break;
                }
            }
            Ok(read)
        })
    }

    /// One datagram: to the peer connection, or, on a light connection, measured from its
    /// header into `state` (locked from `shared` when first needed).
    fn on_datagram<'s>(
        &mut self,
        datagram: stamped::Datagram<'_>,
        shared: &'s Shared,
        state: &mut Option<MutexGuard<'s, PeerState>>,
    ) {
        let stamped::Datagram {
            bytes: d, from, at, ..
        } = datagram;
        let verdict = match self.light.as_deref_mut() {
            Some(light) => light.classify(d, datagram.len, datagram.sample),
            // Larger than any datagram a server sends: dropped, as an oversized read would be.
            None if !datagram.whole() => return,
            None => return self.feed(at, from, d, 0),
        };
        if verdict == Verdict::Unreadable {
            state
                .get_or_insert_with(|| lock(shared))
                .reception
                .light
                .unreadable += 1;
            return;
        }
        if verdict == Verdict::NotRtp {
            self.feed(at, from, d, 0);
            // Measured now, in arrival order with the packets around it (jitter and freezes
            // are measured from one packet to the next).
            self.take_reads(shared, state);
            return;
        }
        let s = state.get_or_insert_with(|| lock(shared));
        let Verdict::HeaderOnly {
            header: h,
            video,
            bytes,
        } = verdict
        else {
            s.reception.light.sampled += 1;
            let roc =
                crate::light::rtp_header(d).map_or(0, |h| s.reception.rollovers(h.ssrc, h.seq));
            self.feed(at, from, d, roc);
            self.take_reads(shared, state);
            return;
        };
        s.reception.light.header_only += 1;
        s.reception.on_packet(Arrival {
            now: at,
            ssrc: h.ssrc,
            video,
            seq: h.seq,
            rtp_time: h.timestamp,
            bytes,
            marker: h.marker,
            sent: None,
        });
    }

    /// Passes a datagram from `from` to the transport (`roc`: the rollover counter of an RTP
    /// packet's stream), or else the peer connection.
    fn feed(&mut self, now: Instant, from: SocketAddr, d: &[u8], roc: u32) {
        self.stirred = true;
        if let Some(t) = self.transport.as_mut() {
            // A datagram the transport refuses (garbage, a stray or forged packet, one that
            // fails authentication) is dropped, as a browser would; a sampled packet that
            // does not decrypt shows up in the light counts (sampled, not authenticated).
            match t.handle_datagram(now, from, d, roc) {
                Ok(Some(TransportEvent::Connected)) => self.transport_up = true,
                Ok(Some(TransportEvent::Closed)) => self.transport_closed = true,
                Ok(Some(event)) => self.transport_events.push((now, event)),
                Ok(None) | Err(_) => {}
            }
            return;
        }
        let input = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.local,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(d),
        };
        // A datagram the connection cannot use (garbage, a stray packet) is dropped, as a
        // browser would.
        let _ = self.pc.handle_read(input);
    }

    /// When the connection next needs [`Conn::handle_timeout`]. A connected light connection
    /// does everything at its reads: its peer connection's timers and reports wait for them.
    pub fn timeout(&mut self) -> Option<Instant> {
        let Some(light) = &self.light else {
            return self.pc.poll_timeout();
        };
        if let Some(t) = &self.transport {
            self.pc_timeout = t.poll_timeout();
            self.stirred = false;
        } else if self.stirred {
            self.pc_timeout = self.pc.poll_timeout();
            self.stirred = false;
        }
        if let Some(next) = self.pace.as_ref().and_then(ReadPace::next) {
            return Some(next);
        }
        match (self.pc_timeout, light.next_report()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs what is due at `now`: a light connection's read, the peer connection's timers,
    /// and a light connection's receiver reports (from the measurements in `shared`).
    pub fn handle_timeout(&mut self, now: Instant, shared: &Shared) -> io::Result<()> {
        if self
            .pace
            .as_ref()
            .and_then(ReadPace::next)
            .is_some_and(|t| t <= now)
        {
            let read = self.read(shared, usize::MAX)?;
            if let Some(pace) = &mut self.pace {
                pace.after_read(now, read);
            }
        }
        if let Some(t) = self.transport.as_mut() {
            if t.poll_timeout().is_some_and(|at| at <= now) {
                self.stirred = true;
                // A check that cannot be built is not sent; the connection's timeout says.
                let _ = t.handle_timeout(now);
            }
        } else if self.stirred && self.light.is_some() {
            self.pc_timeout = self.pc.poll_timeout();
        }
        let ticks = self
            .last_tick
            .is_none_or(|t| now.saturating_duration_since(t) >= LIGHT_TICK);
        let pc_due = ticks && self.transport.is_none() && self.pc_timeout.is_some_and(|t| t <= now);
        if self.light.is_none() || pc_due {
            if self.last_tick.is_some() {
                self.last_tick = Some(now);
            }
            self.stirred = true;
            // Errors here are the connection's own failures; they surface as a state change.
            let _ = self.pc.handle_timeout(now);
        }
        let Some(light) = &mut self.light else {
            return Ok(());
        };
        if light.next_report().is_some_and(|t| t <= now) {
            let reports = light.reports(now, &lock(shared).reception);
            for rr in reports {
                self.stirred = true;
                if let Some(t) = self.transport.as_mut() {
                    // Refused only when the connection is not up: nothing to report to.
                    let _ = t.send_rtcp(&[Box::new(rr)]);
                    continue;
                }
                let message = RTCMessage::RtcpPacket(String::new(), vec![Box::new(rr)]);
                // Refused only when the connection is not up, and then there is nothing to
                // report to.
                let _ = self.pc.handle_write(TaggedRTCMessage { now, message });
            }
        }
        Ok(())
    }

    /// Takes the connection's events and received packets: packets are measured into the
    /// peer's state; a failed connection is an error.
    pub fn drain(&mut self, shared: &Shared) -> anyhow::Result<Drained> {
        let mut out = Drained::default();
        if !self.stirred {
            return Ok(out);
        }
        if std::mem::take(&mut self.transport_up) {
            self.on_connected(&mut out)?;
        }
        if self.transport_closed {
            anyhow::bail!("the server closed DTLS");
        }
        // Events first: a track opened by a packet is known before that packet is read.
        while let Some(event) = self.pc.poll_event() {
            match event {
                RTCPeerConnectionEvent::OnConnectionStateChangeEvent(s) => match s {
                    RTCPeerConnectionState::Connected => self.on_connected(&mut out)?,
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
        out.keyframe_requested = self.take_reads(shared, &mut None);
        Ok(out)
    }

    /// The connection (its peer connection or its transport) is up.
    fn on_connected(&mut self, out: &mut Drained) -> anyhow::Result<()> {
        if self.connected {
            return Ok(());
        }
        self.connected = true;
        out.connected = true;
        if let Some(light) = &mut self.light {
            let now = Instant::now();
            light.on_connected(now);
            self.read_on_timer(now)
                .context("taking the socket out of the reactor")?;
        }
        Ok(())
    }

    /// Takes what the peer connection decrypted: packets are measured into `state` (locked
    /// from `shared` when first needed), sender reports noted by a light connection. Returns
    /// whether the far end asked for a keyframe (PLI or FIR).
    fn take_reads<'s>(
        &mut self,
        shared: &'s Shared,
        state: &mut Option<MutexGuard<'s, PeerState>>,
    ) -> bool {
        let mut keyframe_requested = false;
        for (now, event) in std::mem::take(&mut self.transport_events) {
            match event {
                TransportEvent::Rtp(p) => self.measure(now, "", &p, shared, state),
                TransportEvent::Rtcp(packets) => keyframe_requested |= self.on_rtcp(now, &packets),
                TransportEvent::Connected | TransportEvent::Closed => {}
            }
        }
        if self.transport.is_some() {
            return keyframe_requested;
        }
        while let Some(TaggedRTCMessage { now, message }) = self.pc.poll_read() {
            match message {
                RTCMessage::RtpPacket(track, p) => self.measure(now, &track, &p, shared, state),
                RTCMessage::RtcpPacket(_, packets) => {
                    keyframe_requested |= self.on_rtcp(now, &packets)
                }
                _ => {}
            }
        }
        keyframe_requested
    }

    /// Measures a decrypted packet of `track` (empty if not known) into `state`.
    fn measure<'s>(
        &mut self,
        now: Instant,
        track: &str,
        p: &rtc::rtp::packet::Packet,
        shared: &'s Shared,
        state: &mut Option<MutexGuard<'s, PeerState>>,
    ) {
        let ssrc = p.header.ssrc;
        // A light connection takes the kind from the payload type, as it does for the packets
        // it does not decrypt.
        let mut known = None;
        if let Some(l) = self.light.as_deref_mut() {
            let h = &p.header;
            l.on_decrypted(ssrc, h.sequence_number, p.payload.len(), h.padding);
            known = l.video(h.payload_type);
        }
        let video = match known.or_else(|| {
            self.ssrc_kinds
                .iter()
                .find(|(s, _)| *s == ssrc)
                .map(|(_, v)| *v)
        }) {
            Some(video) => video,
            None => {
                // A track not announced yet: Opus is payload type 111 in every offer we make
                // or have seen; anything else is taken for video.
                let video = self
                    .kinds
                    .get(track)
                    .copied()
                    .unwrap_or(p.header.payload_type != 111);
                self.ssrc_kinds.push((ssrc, video));
                video
            }
        };
        let s = state.get_or_insert_with(|| lock(shared));
        if self.light.is_some() {
            s.reception.light.authenticated += 1;
            if self.transport.is_some() {
                s.reception.light.own_transport += 1;
            }
        }
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

    /// RTCP from the far end: sender reports noted by a light connection; whether it asks
    /// for a keyframe (PLI or FIR).
    fn on_rtcp(&mut self, now: Instant, packets: &[Box<dyn rtc::rtcp::Packet>]) -> bool {
        if let Some(light) = &mut self.light {
            light.on_rtcp(now, packets);
        }
        packets.iter().any(|p| {
            p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
        })
    }

    /// Sends what the connection has queued.
    pub async fn flush(&mut self) {
        if !self.stirred {
            return;
        }
        if let Some(t) = self.transport.as_mut() {
            for (to, d) in t.take_out() {
                self.socket.send_to(&d, to).await;
            }
            // The peer connection only negotiates: whatever it would send (it runs no timer,
            // so nothing is expected) is not for the wire.
            while self.pc.poll_write().is_some() {}
            return;
        }
        while let Some(t) = self.pc.poll_write() {
            self.socket.send_to(&t.message, t.transport.peer_addr).await;
        }
    }

    /// Closes the connection and sends what that queued (DTLS close notify).
    pub async fn close(&mut self) {
        self.stirred = true;
        if let Some(t) = self.transport.as_mut() {
            t.close(Instant::now());
        }
        let _ = self.pc.close();
        self.flush().await;
    }
}
