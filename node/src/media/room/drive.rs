//! The packet path of a room: datagrams into peer connections, media into the forwarding core,
//! the core's outputs into subscribers' peer connections and onto the wire; and timers.
//!
//! Everything here runs on the room's worker thread for each datagram. Per packet and
//! subscriber it does one header rewrite (in the core), one write of the packet into the
//! worker's send buffer with its edits and SRTP protection in place (the node's own transport,
//! [`crate::media::transport`]) and one entry in the worker's send batch; nothing is allocated.
//! Publishers' connections are webrtc-rs's; subscribers' are negotiated by webrtc-rs and
//! carried by the node.

use crate::media::ParticipantKind;
use crate::media::demux::{PacketClass, classify};
use crate::media::egress::Effect;
use crate::media::egress::Egress;
use crate::media::peer::Direction;
use crate::media::room::{LocalRoom, Origin};
use crate::media::transport::TransportEvent;
use crate::signaling::protocol::{ServerMessage, SpeakerView};
use bytes::BytesMut;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_cc::TransportLayerCc;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use sfu_core::Output;
use sfu_core::SinkId;
use std::net::SocketAddr;
use std::time::Instant;

/// Counters of packets the room layer dropped (the core counts its own).
#[derive(Default, Debug, Clone, Copy)]
pub struct EdgeDrops {
    /// Datagrams a peer connection rejected (bad DTLS/SRTP, failed authentication).
    pub rejected: u64,
    /// RTP for a track or layer the room does not know.
    pub unknown_track: u64,
    /// Packets a subscriber's peer connection refused to send.
    pub send_failed: u64,
    /// Participants' data packets refused (too large, too many, not a participant's packet,
    /// or not sendable to a recipient); see [`crate::media::room::data`].
    pub data_refused: u64,
}

impl LocalRoom {
    /// A datagram from `from` for peer `key`. Only what authenticates keeps a peer alive or
    /// binds an address to it: a check carrying its password, DTLS and SRTP/SRTCP that
    /// decrypts.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        key: usize,
        from: SocketAddr,
        data: &[u8],
        out: &mut Egress,
    ) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if let Some(transport) = &mut peer.transport {
            let mut replies = Vec::new();
            let result = transport.handle_datagram(now, from, data, &mut replies);
            for (addr, d) in replies {
                out.udp.push(addr, d);
            }
            match result {
                Ok(event) => {
                    peer.last_heard = now;
                    match event {
                        Some(TransportEvent::Address(addr)) => self.peers.bind_addr(key, addr),
                        Some(TransportEvent::Connected) => self.on_connected(now, key, out),
                        Some(TransportEvent::Closed) => {
                            self.on_peer_failed(now, key, "closed", out)
                        }
                        Some(TransportEvent::Rtcp(packets)) => self.on_rtcp(now, key, &packets),
                        None => {}
                    }
                }
                Err(e) => {
                    self.drops.rejected += 1;
                    tracing::trace!(room = %self.name, "datagram rejected: {e}");
                }
            }
            self.route_core_outputs(now, out);
            self.peers.rearm(key);
            return;
        }
        // A connection webrtc-rs runs (publishers): its peer's checks are verified here first,
        // so that an address is bound only by one that knows the password. (Answers to the
        // agent's own checks go to it as they are: it authenticates them.)
        if classify(data) == PacketClass::Stun {
            use crate::media::transport::stun::{StunError, verify};
            match verify(
                data,
                &peer.ice.ufrag,
                &peer.ice.pwd,
                self.ctx.crypto.crypto(),
            ) {
                Ok(()) => self.peers.bind_addr(key, from),
                Err(StunError::NotBindingRequest) if peer.addrs.contains(&from) => {}
                Err(e) => {
                    self.drops.rejected += 1;
                    tracing::trace!(room = %self.name, "check rejected: {e}");
                    return;
                }
            }
        }
        let local_addr = self.ctx.candidates[0];
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let input = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        match peer.pc.handle_read(input) {
            Ok(()) => peer.last_heard = now,
            Err(e) => {
                self.drops.rejected += 1;
                tracing::trace!(room = %self.name, "datagram rejected: {e}");
            }
        }
        self.drive(now, key, out);
    }

    /// A subscriber connection is up: its subscriptions start (a WHEP player's sources are
    /// chosen).
    pub(super) fn on_connected(&mut self, now: Instant, key: usize, out: &mut Egress) {
        let peer = &mut self.peers[key];
        if peer.connected {
            return;
        }
        peer.connected = true;
        let (sid, direction) = (peer.participant.clone(), peer.direction);
        tracing::info!(room = %self.name, participant = %sid, ?direction, "peer connected");
        if direction == Direction::Subscribe {
            let whep = self
                .roster
                .local
                .get(&sid)
                .is_some_and(|p| matches!(p.kind, ParticipantKind::Whep { .. }));
            if whep {
                self.choose_whep_sources(now, out);
            } else {
                self.attach_subscriptions(now, key);
            }
        }
    }

    /// A packet of a remote track, from a relay link.
    pub fn handle_relayed_rtp(
        &mut self,
        now: Instant,
        track: sfu_core::TrackId,
        layer: sfu_core::LayerIndex,
        packet: sfu_core::Packet,
        out: &mut Egress,
    ) {
        self.core.handle_rtp(now, track, layer, packet);
        self.route_core_outputs(now, out);
    }

    /// Runs due timers: peer connections', the core's and the room's own.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Egress) {
        while let Some(key) = self.peers.pop_due(now) {
            let peer = &mut self.peers[key];
            if let Err(e) = peer.pc.handle_timeout(now) {
                tracing::debug!(room = %self.name, "peer timeout: {e}");
            }
            if let Some(t) = &mut peer.transport {
                let mut replies = Vec::new();
                t.handle_timeout(now, &mut replies);
                for (addr, d) in replies {
                    out.udp.push(addr, d);
                }
            }
            self.drive(now, key, out);
        }
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
            self.route_core_outputs(now, out);
        }
        self.flush_speakers(now);
        self.housekeeping(now, out);
    }

    /// Drains a peer connection: its events, its media, its datagrams; then the core's outputs.
    pub(super) fn drive(&mut self, now: Instant, key: usize, out: &mut Egress) {
        // Events first: a track opened by a packet must be known before that packet is read.
        loop {
            let Some(peer) = self.peers.get_mut(key) else {
                return;
            };
            let Some(event) = peer.pc.poll_event() else {
                break;
            };
            self.on_event(now, key, event, out);
        }
        loop {
            let Some(peer) = self.peers.get_mut(key) else {
                return;
            };
            let Some(message) = peer.pc.poll_read() else {
                break;
            };
            self.on_message(now, key, message, out);
        }
        if let Some(peer) = self.peers.get_mut(key) {
            while let Some(t) = peer.pc.poll_write() {
                out.udp.push(t.transport.peer_addr, t.message);
            }
        }
        self.route_core_outputs(now, out);
        self.peers.rearm(key);
    }

    fn on_event(
        &mut self,
        now: Instant,
        key: usize,
        event: RTCPeerConnectionEvent,
        out: &mut Egress,
    ) {
        match event {
            // The node runs a subscriber's transport itself: webrtc-rs, which never sees its
            // datagrams, would report it failed.
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(_)
                if self.peers[key].transport.is_some() => {}
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => match state {
                RTCPeerConnectionState::Connected => self.on_connected(now, key, out),
                RTCPeerConnectionState::Failed => self.on_peer_failed(now, key, "failed", out),
                RTCPeerConnectionState::Closed => self.on_peer_failed(now, key, "closed", out),
                _ => {}
            },
            RTCPeerConnectionEvent::OnDataChannel(
                rtc::peer_connection::event::RTCDataChannelEvent::OnOpen(id),
            ) => self.on_data_channel_open(key, id),
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let peer = &mut self.peers[key];
                if let Some(inbound) = peer.inbound.get_mut(&init.track_id) {
                    let rid = init.rid.unwrap_or_default();
                    let layer = inbound.rids.iter().position(|r| *r == rid).unwrap_or(0);
                    inbound.ssrcs[layer] = Some(init.ssrc);
                }
            }
            _ => {}
        }
    }

    fn on_message(
        &mut self,
        now: Instant,
        key: usize,
        message: TaggedRTCMessage,
        out: &mut Egress,
    ) {
        match message.message {
            RTCMessage::RtpPacket(rtc_track, packet) => {
                let peer = &mut self.peers[key];
                let target = peer.inbound.get_mut(&rtc_track).and_then(|i| {
                    let layer = i.layer_of(packet.header.ssrc)?;
                    // Counted for connection quality: a few integer operations.
                    if let Some(rx) = i.rx.get_mut(layer) {
                        rx.on_packet(packet.header.sequence_number);
                    }
                    Some((i.track, layer))
                });
                match target {
                    Some((track, layer)) => {
                        self.core.handle_rtp(now, track, layer, packet);
                        // Fan out at once so the send batch never holds more than one input
                        // packet's worth of copies.
                        self.route_core_outputs(now, out);
                    }
                    None => self.drops.unknown_track += 1,
                }
            }
            RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(now, key, &packets),
            RTCMessage::DataChannelMessage(id, m) => self.on_data_message(now, key, id, m, out),
            _ => {}
        }
    }

    fn on_rtcp(&mut self, now: Instant, key: usize, packets: &[Box<dyn rtcp::Packet>]) {
        let peer = &self.peers[key];
        match peer.direction {
            Direction::Publish => {
                for p in packets {
                    let Some(sr) = p.as_any().downcast_ref::<SenderReport>() else {
                        continue;
                    };
                    let target = peer
                        .inbound
                        .values()
                        .find_map(|i| Some((i.track, i.layer_of(sr.ssrc)?)));
                    if let Some((track, layer)) = target {
                        self.core
                            .handle_sender_report(now, track, layer, sr.ntp_time, sr.rtp_time);
                    }
                }
            }
            Direction::Subscribe => {
                let subscription = |ssrc: u32| {
                    peer.outbound
                        .iter()
                        .find(|o| o.ssrc == ssrc)
                        .and_then(|o| o.subscription)
                };
                let mut keyframes = Vec::new();
                let mut nacks = Vec::new();
                let mut reports = Vec::new();
                for p in packets {
                    let any = p.as_any();
                    if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                        for r in &rr.reports {
                            let kind = peer.outbound.iter().find(|o| o.ssrc == r.ssrc);
                            reports.extend(kind.map(|o| (o.kind, r.clone())));
                        }
                    }
                    tracing::trace!(room = %self.name, rtcp = ?p.header().packet_type, "subscriber RTCP");
                    if let Some(pli) = any.downcast_ref::<PictureLossIndication>() {
                        keyframes.extend(subscription(pli.media_ssrc));
                    } else if let Some(fir) = any.downcast_ref::<FullIntraRequest>() {
                        keyframes.extend(fir.fir.iter().filter_map(|e| subscription(e.ssrc)));
                    } else if let Some(nack) = any.downcast_ref::<TransportLayerNack>()
                        && let Some(sub) = subscription(nack.media_ssrc)
                    {
                        let lost: Vec<u16> =
                            nack.nacks.iter().flat_map(|n| n.packet_list()).collect();
                        nacks.push((sub, lost));
                    } else if let Some(cc) = any.downcast_ref::<TransportLayerCc>() {
                        self.core
                            .handle_transport_feedback(now, SinkId(key as u64), cc);
                    } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>()
                    {
                        self.core
                            .handle_remb(now, SinkId(key as u64), remb.bitrate as f64);
                    }
                }
                if let Some(peer) = self.peers.get_mut(key) {
                    for (kind, r) in &reports {
                        peer.quality.on_report(now, *kind, r);
                    }
                }
                for sub in keyframes {
                    self.core.handle_keyframe_request(now, sub);
                }
                for (sub, lost) in nacks {
                    self.core.handle_nack(now, sub, &lost);
                }
            }
        }
    }

    /// Carries out what the forwarding core asked for.
    pub(in crate::media) fn route_core_outputs(&mut self, now: Instant, out: &mut Egress) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Rtp {
                    sink,
                    packet,
                    edits,
                    ..
                } => {
                    if crate::media::room::record::is_recorder(sink) {
                        self.record(now, sink, &packet, &edits);
                        continue;
                    }
                    // The direct send path: written once into the send buffer, protected in
                    // place (see `transport`).
                    let Some(t) = self
                        .peers
                        .get_mut(sink.0 as usize)
                        .and_then(|p| p.transport.as_mut())
                    else {
                        continue;
                    };
                    match t.send_rtp(&packet.header, &packet.payload, &edits, &mut out.arena) {
                        Ok(Some((addr, datagram))) => out.udp.push(addr, datagram),
                        Ok(None) => {}
                        Err(e) => {
                            self.drops.send_failed += 1;
                            tracing::trace!(room = %self.name, "send: {e}");
                        }
                    }
                }
                Output::SenderReport { sink, report, .. } => {
                    let sr = SenderReport {
                        ssrc: report.ssrc,
                        ntp_time: report.ntp,
                        rtp_time: report.rtp_time,
                        packet_count: report.packet_count,
                        octet_count: report.octet_count,
                        ..Default::default()
                    };
                    if let Some(peer) = self.peers.get_mut(sink.0 as usize) {
                        peer.quality.on_sender_report(report.ssrc, report.ntp, now);
                    }
                    self.write_rtcp(now, sink.0 as usize, Box::new(sr), out);
                }
                Output::Relay { sink, packet, .. } => {
                    out.relay.push(sink, packet);
                }
                Output::Speakers(speakers) => {
                    let speakers = speakers
                        .into_iter()
                        .map(|s| SpeakerView {
                            participant: s.participant.to_string(),
                            track: s.track.to_string(),
                            level: s.level,
                        })
                        .collect();
                    self.speakers_changed(now, speakers);
                    self.steer_programs(now, out);
                }
                Output::SharedLevels(levels) => {
                    // Every node hosting part of the room ranks speakers, audience nodes too;
                    // so do federation gateways carrying the room, which the worker adds (from
                    // the registry) even when no other node hosts it.
                    out.effects.push(Effect::SharedLevels {
                        room: self.name.clone(),
                        nodes: self.roster.nodes(&self.ctx.node_id),
                        levels,
                    });
                }
                Output::PublisherLayers { track, active } => {
                    let Some(p) = self.publications.get(&track) else {
                        continue;
                    };
                    let layers: Vec<String> = p
                        .rids
                        .iter()
                        .zip(&active)
                        .filter(|(_, on)| **on)
                        .map(|(rid, _)| rid.clone())
                        .collect();
                    tracing::debug!(room = %self.name, %track, ?layers, "dynacast");
                    if let Some(owner) = self.roster.local.get(&p.owner) {
                        owner.send(ServerMessage::PublisherLayers {
                            track: track.to_string(),
                            name: p.name.clone(),
                            layers,
                        });
                    }
                }
                Output::KeyframeRequest { track, layer } => {
                    let Some(published) = self.publications.get(&track) else {
                        continue;
                    };
                    let key = match &published.origin {
                        Origin::Local { peer } => *peer,
                        Origin::Remote { .. } => {
                            out.effects.push(Effect::UpstreamKeyframe {
                                room: self.name.clone(),
                                track,
                                layer,
                            });
                            continue;
                        }
                    };
                    let ssrc = self
                        .peers
                        .get(key)
                        .and_then(|p| p.inbound.values().find(|i| i.track == track))
                        .and_then(|i| *i.ssrcs.get(layer)?);
                    if let Some(media_ssrc) = ssrc {
                        let pli = PictureLossIndication {
                            sender_ssrc: 0,
                            media_ssrc,
                        };
                        self.write_rtcp(now, key, Box::new(pli), out);
                    }
                }
            }
        }
    }

    fn write_rtcp(
        &mut self,
        now: Instant,
        key: usize,
        packet: Box<dyn rtcp::Packet>,
        out: &mut Egress,
    ) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if !peer.connected {
            return;
        }
        if let Some(t) = &mut peer.transport {
            match t.send_rtcp(&[packet]) {
                Ok(Some((addr, datagram))) => out.udp.push(addr, datagram),
                Ok(None) => {}
                Err(_) => self.drops.send_failed += 1,
            }
            return;
        }
        let message = TaggedRTCMessage {
            now,
            message: RTCMessage::RtcpPacket(String::new(), vec![packet]),
        };
        if peer.pc.handle_write(message).is_err() {
            self.drops.send_failed += 1;
        }
        while let Some(t) = peer.pc.poll_write() {
            out.udp.push(t.transport.peer_addr, t.message);
        }
    }
}
