//! Subscriber peer connections: which tracks they carry and the node-initiated offer/answer for
//! WebSocket clients (WHEP players' connections: [`super::players`]).

use crate::media::ParticipantKind;
use crate::media::egress::Egress;
use crate::media::peer::{Direction, add_host_candidates};
use crate::media::room::pause;
use crate::media::room::publish::{internal, invalid_sdp};
use crate::media::room::{LocalRoom, Outbound};
use crate::signaling::protocol::{ErrorCode, SectionTrack, ServerMessage, SignalError};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverId};
use sfu_core::{MediaKind, SinkId, SubscriptionParams, SubscriptionSettings, TrackId};
use std::time::Instant;

/// The SHA-256 certificate fingerprint an SDP announces (`a=fingerprint:sha-256 AB:CD:…`),
/// at session or media level (bundled connections share one certificate).
pub(super) fn sha256_fingerprint(sdp: &str) -> Option<String> {
    sdp.lines().find_map(|l| {
        let v = l.trim().strip_prefix("a=fingerprint:")?;
        let (alg, value) = v.split_once(' ')?;
        alg.eq_ignore_ascii_case("sha-256")
            .then(|| value.trim().to_owned())
    })
}

/// Hands the peer's certificate fingerprint to the node's transport of its connection; true
/// if that connected it (the handshake had finished before the answer arrived).
fn set_fingerprint(peer: &mut crate::media::room::Peer, sdp: &str) -> Result<bool, SignalError> {
    let Some(t) = &mut peer.transport else {
        return Ok(false);
    };
    let fingerprint = sha256_fingerprint(sdp).ok_or_else(|| {
        SignalError::new(
            ErrorCode::InvalidSdp,
            "the answer has no a=fingerprint:sha-256 line",
        )
    })?;
    t.set_remote_fingerprint(&fingerprint)
        .map_err(|e| SignalError::new(ErrorCode::InvalidSdp, e.to_string()))
}

fn rtc_kind(kind: MediaKind) -> RtpCodecKind {
    match kind {
        MediaKind::Audio => RtpCodecKind::Audio,
        MediaKind::Video => RtpCodecKind::Video,
    }
}

impl LocalRoom {
    /// The `subscribe` and `unsubscribe` requests of a WebSocket client.
    pub fn subscribe(
        &mut self,
        now: Instant,
        sid: &str,
        tracks: &[String],
        subscribe: bool,
    ) -> Result<(), SignalError> {
        let p = self.participant(sid)?;
        if p.kind != ParticipantKind::Client {
            return Err(SignalError::new(
                ErrorCode::InvalidState,
                "not a WebSocket session",
            ));
        }
        if subscribe && !p.can_subscribe {
            return Err(SignalError::new(
                ErrorCode::Forbidden,
                "the access token does not allow subscribing",
            ));
        }
        let mut ids = Vec::with_capacity(tracks.len());
        for t in tracks {
            let id: TrackId = t.parse().map_err(|_| {
                SignalError::new(ErrorCode::BadRequest, format!("malformed track sid {t:?}"))
            })?;
            if subscribe && !self.publications.contains(&id) {
                return Err(SignalError::new(
                    ErrorCode::NotFound,
                    format!("no track {t}"),
                ));
            }
            ids.push(id);
        }
        for id in ids {
            if subscribe {
                self.add_outbound(now, sid, id)?;
            } else {
                self.remove_outbound(sid, id);
            }
        }
        self.negotiate(now, sid)?;
        Ok(())
    }

    /// The `track_settings` request: how the client shows a track it receives.
    pub fn track_settings(
        &mut self,
        now: Instant,
        sid: &str,
        track: &str,
        settings: crate::media::TrackSettings,
    ) -> Result<(), SignalError> {
        let id: TrackId = track.parse().map_err(|_| {
            SignalError::new(
                ErrorCode::BadRequest,
                format!("malformed track sid {track:?}"),
            )
        })?;
        let key = self.participant(sid)?.subscriber.ok_or_else(|| {
            SignalError::new(ErrorCode::NotFound, format!("not subscribed to {track}"))
        })?;
        let outbound = self.peers[key]
            .outbound
            .iter_mut()
            .find(|o| o.source == Some(id))
            .ok_or_else(|| {
                SignalError::new(ErrorCode::NotFound, format!("not subscribed to {track}"))
            })?;
        outbound.settings = Some(settings);
        let Some(subscription) = outbound.subscription else {
            // Applied when the subscription starts (after negotiation, or once a remote track
            // arrives).
            return Ok(());
        };
        self.apply_settings(now, subscription, id, settings);
        Ok(())
    }

    /// Turns a client's settings into the forwarding core's: the rendered height picks the
    /// highest useful simulcast layer.
    pub(super) fn apply_settings(
        &mut self,
        now: Instant,
        subscription: sfu_core::SubscriptionId,
        track: TrackId,
        settings: crate::media::TrackSettings,
    ) {
        let default_max = self.ctx.default_max_layer;
        let Some(t) = self.core.track(track) else {
            return;
        };
        let max_layer = settings.height.map_or(default_max, |h| {
            // A client that only gave a width: assume 16:9.
            t.layer_for_height(h.max(settings.width.unwrap_or(0) * 9 / 16))
                .min(default_max)
        });
        let settings = SubscriptionSettings {
            max_layer: settings.enabled.then_some(max_layer),
            pinned: settings.pinned,
        };
        if let Err(e) = self.core.update_subscription(now, subscription, settings) {
            tracing::debug!(room = %self.name, "track settings: {e}");
        }
    }

    /// Subscribes interested participants to a newly published track.
    pub(super) fn on_track_published(&mut self, now: Instant, track: TrackId, out: &mut Egress) {
        let owner = self.publications.get(&track).map(|t| t.owner.clone());
        let auto: Vec<String> = self
            .roster
            .local
            .values()
            .filter(|p| p.auto_subscribe && p.can_subscribe && Some(&p.sid) != owner.as_ref())
            .map(|p| p.sid.clone())
            .collect();
        for sid in auto {
            let result = self
                .add_outbound(now, &sid, track)
                .and_then(|()| self.negotiate(now, &sid));
            if let Err(e) = result {
                tracing::warn!(room = %self.name, participant = %sid, "auto-subscribe failed: {e}");
            }
        }
        self.choose_whep_sources(now, out);
    }

    /// Subscribes a new participant to everything already published (auto-subscribe).
    pub fn subscribe_existing(&mut self, now: Instant, sid: &str) {
        let Some(p) = self.roster.local.get(sid) else {
            return;
        };
        if !(p.auto_subscribe && p.can_subscribe) {
            return;
        }
        let tracks: Vec<TrackId> = self
            .publications
            .iter()
            .filter(|t| t.owner != sid)
            .map(|t| t.id)
            .collect();
        if tracks.is_empty() {
            return;
        }
        let result = tracks
            .into_iter()
            .try_for_each(|t| self.add_outbound(now, sid, t))
            .and_then(|()| self.negotiate(now, sid));
        if let Err(e) = result {
            tracing::warn!(room = %self.name, participant = %sid, "auto-subscribe failed: {e}");
        }
    }

    fn subscriber_peer(&mut self, now: Instant, sid: &str) -> Result<usize, SignalError> {
        match self.participant(sid)?.subscriber {
            Some(k) => Ok(k),
            None => self.create_peer(now, sid, Direction::Subscribe),
        }
    }

    /// Adds a send-only media section for `track` (sent at the next offer).
    fn add_outbound(&mut self, now: Instant, sid: &str, track: TrackId) -> Result<(), SignalError> {
        let Some(published) = self.publications.get(&track) else {
            return Err(SignalError::new(
                ErrorCode::NotFound,
                format!("no track {track}"),
            ));
        };
        if published.owner == sid {
            return Ok(());
        }
        let (kind, owner, name, codec) = (
            published.kind,
            published.owner.clone(),
            published.id.to_string(),
            published.rtc_codec.clone(),
        );
        let codec_mime = codec.mime_type.clone();
        let key = self.subscriber_peer(now, sid)?;
        let peer = &mut self.peers[key];
        if peer.outbound.iter().any(|o| o.source == Some(track)) {
            return Ok(());
        }
        let ssrc = rand::random::<u32>();
        // The stream id is `participant|track`, as LiveKit's SDKs expect: they find a
        // received track's participant and track sid in it.
        let media = MediaStreamTrack::new(
            format!("{owner}|{name}"),
            name.clone(),
            name,
            rtc_kind(kind),
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    rtcp_feedback: Vec::new(),
                    ..codec
                },
                active: true,
                ..Default::default()
            }],
        );
        let sender = peer.pc.add_track(media).map_err(internal)?;
        let ids: Vec<_> = peer.pc.get_transceivers().collect();
        let transceiver = ids.into_iter().find(|t| {
            peer.pc
                .rtp_transceiver(*t)
                .and_then(|t| t.sender())
                .is_some_and(|s| s == sender)
        });
        if let Some(mut t) = transceiver.and_then(|t| peer.pc.rtp_transceiver(t)) {
            // Only the track's codec: see `peer::codecs_for`.
            let preferred = crate::media::peer::codecs_for(&codec_mime);
            if let Err(e) = t.set_codec_preferences(preferred) {
                tracing::debug!(room = %self.name, "codec preferences: {e}");
            }
        }
        peer.outbound.push(Outbound {
            sender,
            kind,
            ssrc,
            source: Some(track),
            subscription: None,
            negotiated: false,
            settings: None,
        });
        peer.negotiation.needs_offer = true;
        Ok(())
    }

    fn remove_outbound(&mut self, sid: &str, track: TrackId) {
        let Some(key) = self.roster.local.get(sid).and_then(|p| p.subscriber) else {
            return;
        };
        let peer = &mut self.peers[key];
        let Some(i) = peer.outbound.iter().position(|o| o.source == Some(track)) else {
            return;
        };
        let o = peer.outbound.remove(i);
        if let Err(e) = peer.pc.remove_track(o.sender) {
            tracing::debug!("remove_track: {e}");
        }
        peer.negotiation.needs_offer = true;
        if let Some(sub) = o.subscription {
            self.core.unsubscribe(sub);
        }
    }

    /// Sends a new offer to the client if its subscriber connection changed and no offer is
    /// outstanding (changes made meanwhile go into the next offer, after the answer).
    pub(super) fn negotiate(&mut self, now: Instant, sid: &str) -> Result<(), SignalError> {
        let Some(key) = self.roster.local.get(sid).and_then(|p| p.subscriber) else {
            return Ok(());
        };
        let candidates = self.ctx.candidates.clone();
        let peer = &mut self.peers[key];
        if !peer.negotiation.needs_offer || peer.negotiation.offer_outstanding {
            return Ok(());
        }
        if !peer.described {
            add_host_candidates(&mut peer.pc, &candidates).map_err(internal)?;
            peer.described = true;
        }
        let offer = peer.pc.create_offer(None).map_err(internal)?;
        peer.pc
            .set_local_description(now, offer)
            .map_err(internal)?;
        let sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .inspect(
                |sdp| tracing::trace!(room = %self.name, bytes = sdp.len(), "subscriber offer"),
            )
            .ok_or_else(|| internal("no local description after offering"))?;
        peer.negotiation.needs_offer = false;
        peer.negotiation.offer_outstanding = true;
        let mut sections = Vec::new();
        for o in &peer.outbound {
            let Some(source) = o.source else { continue };
            let mid = peer
                .pc
                .rtp_transceiver(RTCRtpTransceiverId::from(o.sender))
                .and_then(|t| t.mid().clone());
            if let (Some(mid), Some(t)) = (mid, self.publications.get(&source)) {
                sections.push(SectionTrack {
                    mid,
                    track: source.to_string(),
                    participant: t.owner.clone(),
                });
            }
        }
        if let Some(p) = self.roster.local.get(sid) {
            p.send(ServerMessage::Offer {
                sdp,
                tracks: sections,
            });
        }
        Ok(())
    }

    /// The client's answer to our offer.
    pub fn subscriber_answer(
        &mut self,
        now: Instant,
        sid: &str,
        sdp: String,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let Some(key) = self.participant(sid)?.subscriber else {
            return Err(SignalError::new(
                ErrorCode::InvalidState,
                "no offer was made",
            ));
        };
        let peer = &mut self.peers[key];
        if !peer.negotiation.offer_outstanding {
            return Err(SignalError::new(
                ErrorCode::InvalidState,
                "no offer is outstanding",
            ));
        }
        let connected_now = set_fingerprint(peer, &sdp)?;
        let answer = RTCSessionDescription::answer(sdp).map_err(invalid_sdp)?;
        peer.pc
            .set_remote_description(now, answer)
            .map_err(invalid_sdp)?;
        peer.negotiation.offer_outstanding = false;
        for o in &mut peer.outbound {
            o.negotiated = true;
        }
        let params = crate::media::peer::sink_params(&mut peer.pc);
        tracing::debug!(room = %self.name, participant = %sid, ?params, "subscriber congestion control");
        self.core.set_sink(SinkId(key as u64), params);
        if connected_now {
            self.on_connected(now, key, out);
        }
        self.attach_subscriptions(now, key);
        self.negotiate(now, sid)?;
        self.drive(now, key, out);
        Ok(())
    }

    /// Creates forwarding-core subscriptions for negotiated sections of a connected peer.
    pub(super) fn attach_subscriptions(&mut self, now: Instant, key: usize) {
        let default_max_layer = self.ctx.default_max_layer;
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if !peer.connected {
            return;
        }
        let mut pending = Vec::new();
        for i in 0..peer.outbound.len() {
            let o = &peer.outbound[i];
            let (Some(source), None, true) = (o.source, o.subscription, o.negotiated) else {
                continue;
            };
            let Some(published) = self.publications.get(&source) else {
                continue;
            };
            if self.core.track(source).is_none() {
                // A remote track not fed yet: attached when it is.
                continue;
            }
            let Some(payload_type) = payload_type_for(&mut peer.pc, o.sender, &published.rtc_codec)
            else {
                tracing::warn!(room = %self.name, track = %source, "subscriber negotiated no codec for track");
                continue;
            };
            let rtx = rtx_for(&mut peer.pc, o.sender, payload_type);
            let red_payload_type = red_for(&mut peer.pc, o.sender, published);
            let params = SubscriptionParams {
                ssrc: o.ssrc,
                payload_type,
                max_layer: default_max_layer,
                rtx,
                red_payload_type,
            };
            match self.core.subscribe(now, source, SinkId(key as u64), params) {
                Ok(sub) => {
                    peer.outbound[i].subscription = Some(sub);
                    if let Some(settings) = pause::settings(peer, i) {
                        pending.push((sub, source, settings));
                    }
                }
                Err(e) => tracing::warn!(room = %self.name, "subscribe: {e}"),
            }
        }
        for (sub, track, settings) in pending {
            self.apply_settings(now, sub, track, settings);
        }
    }

    /// A subscription ended because its track went away.
    pub(super) fn on_subscription_ended(
        &mut self,
        now: Instant,
        key: usize,
        subscription: sfu_core::SubscriptionId,
        out: &mut Egress,
    ) {
        let _ = out;
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        let Some(i) = peer
            .outbound
            .iter()
            .position(|o| o.subscription == Some(subscription))
        else {
            return;
        };
        let sid = peer.participant.clone();
        let whep = self
            .roster
            .local
            .get(&sid)
            .is_some_and(|p| matches!(p.kind, ParticipantKind::Whep { .. }));
        if whep {
            // Keep the section; another source may take it over.
            peer.outbound[i].subscription = None;
            peer.outbound[i].source = None;
        } else {
            let o = peer.outbound.remove(i);
            let _ = peer.pc.remove_track(o.sender);
            peer.negotiation.needs_offer = true;
            if let Err(e) = self.negotiate(now, &sid) {
                tracing::warn!(room = %self.name, participant = %sid, "renegotiation failed: {e}");
            }
        }
    }
}

pub(super) fn rtx_for(
    pc: &mut rtc::peer_connection::RTCPeerConnection,
    sender: RTCRtpSenderId,
    payload_type: u8,
) -> Option<sfu_core::RtxParams> {
    let mut s = pc.rtp_sender(sender)?;
    let params = s.get_parameters();
    let ssrc = params
        .encodings
        .first()?
        .rtp_coding_parameters
        .rtx
        .as_ref()?
        .ssrc;
    let apt = format!("apt={payload_type}");
    let rtx_pt = params.rtp_parameters.codecs.iter().find_map(|c| {
        let rtx = c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx");
        let fmtp = &c.rtp_codec.sdp_fmtp_line;
        (rtx && fmtp.split(';').any(|p| p.trim() == apt)).then_some(c.payload_type)
    })?;
    Some(sfu_core::RtxParams {
        ssrc,
        payload_type: rtx_pt,
    })
}

/// The subscriber's payload type for RED on a sender, for an audio track whose publisher may
/// send RED.
pub(super) fn red_for(
    pc: &mut rtc::peer_connection::RTCPeerConnection,
    sender: RTCRtpSenderId,
    track: &crate::media::room::Published,
) -> Option<u8> {
    if track.kind != MediaKind::Audio || track.red_payload_type.is_none() {
        return None;
    }
    let mut s = pc.rtp_sender(sender)?;
    crate::media::peer::red_payload_type(&s.get_parameters().rtp_parameters.codecs)
}

/// The payload type a subscriber negotiated on a sender for a codec (matching MIME type, and
/// for H.264 preferring the same fmtp line).
pub(super) fn payload_type_for(
    pc: &mut rtc::peer_connection::RTCPeerConnection,
    sender: RTCRtpSenderId,
    codec: &RTCRtpCodec,
) -> Option<u8> {
    let mut s = pc.rtp_sender(sender)?;
    let codecs = &s.get_parameters().rtp_parameters.codecs;
    let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
        c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
    };
    codecs
        .iter()
        .filter(same_mime)
        .find(|c| c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line)
        .or_else(|| codecs.iter().find(same_mime))
        .map(|c| c.payload_type)
}
