//! WHEP players: subscriber connections whose sources the node chooses.
//!
//! A player offers audio and video sections; the node answers with a sender on each and feeds
//! it the room's most relevant tracks (the active speaker's video first), moving a section to
//! another track as speakers change (at a keyframe, through the forwarding core).

use super::subscribe::{payload_type_for, red_for, rtx_for, sha256_fingerprint};
use crate::media::ParticipantKind;
use crate::media::egress::Egress;
use crate::media::peer::{Direction, add_host_candidates};
use crate::media::room::publish::{internal, invalid_sdp};
use crate::media::room::{LocalRoom, Outbound};
use crate::signaling::protocol::{ErrorCode, SignalError};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use sfu_core::{MediaKind, RoomError, SinkId, SubscriptionParams, TrackId};
use std::time::Instant;

impl LocalRoom {
    /// A WHEP offer: attach a sender to each audio and video section the player offers.
    pub fn play(
        &mut self,
        now: Instant,
        sid: &str,
        sdp: String,
        out: &mut Egress,
    ) -> Result<String, SignalError> {
        let p = self.participant(sid)?;
        if !p.can_subscribe {
            return Err(SignalError::new(
                ErrorCode::Forbidden,
                "the access token does not allow subscribing",
            ));
        }
        if p.subscriber.is_some() {
            return Err(SignalError::new(
                ErrorCode::InvalidState,
                "session already playing",
            ));
        }
        let fingerprint = sha256_fingerprint(&sdp).ok_or_else(|| {
            SignalError::new(
                ErrorCode::InvalidSdp,
                "the offer has no a=fingerprint:sha-256 line",
            )
        })?;
        let offer = crate::media::room::publish::client_offer(sdp)?;
        let key = self.create_peer(now, sid, Direction::Subscribe)?;
        if let Some(t) = &mut self.peers[key].transport
            && let Err(e) = t.set_remote_fingerprint(&fingerprint)
        {
            self.remove_peer(now, key, out);
            return Err(SignalError::new(ErrorCode::InvalidSdp, e.to_string()));
        }
        match self.answer_player(now, key, offer) {
            Ok(answer) => {
                self.drive(now, key, out);
                Ok(answer)
            }
            Err(e) => {
                self.remove_peer(now, key, out);
                Err(e)
            }
        }
    }

    fn answer_player(
        &mut self,
        now: Instant,
        key: usize,
        offer: RTCSessionDescription,
    ) -> Result<String, SignalError> {
        let candidates = self.ctx.candidates.clone();
        let stream = format!("{}-{}", self.name, key);
        // The player's media sections, in order; each gets a sender of its kind.
        let kinds: Vec<RtpCodecKind> = offer
            .sdp
            .lines()
            .filter_map(|l| match l.split_whitespace().next() {
                Some("m=audio") => Some(RtpCodecKind::Audio),
                Some("m=video") => Some(RtpCodecKind::Video),
                _ => None,
            })
            .collect();
        if kinds.is_empty() {
            return Err(SignalError::new(
                ErrorCode::InvalidSdp,
                "the offer has no audio or video section to play into",
            ));
        }
        let peer = &mut self.peers[key];
        peer.pc
            .set_remote_description(now, offer)
            .map_err(invalid_sdp)?;
        for (n, kind) in kinds.into_iter().enumerate() {
            let media_kind = match kind {
                RtpCodecKind::Audio => MediaKind::Audio,
                RtpCodecKind::Video => MediaKind::Video,
                _ => continue,
            };
            let ssrc = rand::random::<u32>();
            let media = MediaStreamTrack::new(
                stream.clone(),
                format!("{stream}-{n}"),
                format!("{stream}-{n}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(ssrc),
                        ..Default::default()
                    },
                    active: true,
                    ..Default::default()
                }],
            );
            let sender = peer.pc.add_track(media).map_err(internal)?;
            peer.outbound.push(Outbound {
                sender,
                kind: media_kind,
                ssrc,
                source: None,
                subscription: None,
                negotiated: true,
                settings: None,
            });
        }
        add_host_candidates(&mut peer.pc, &candidates).map_err(internal)?;
        peer.described = true;
        let answer = peer.pc.create_answer(None).map_err(invalid_sdp)?;
        peer.pc
            .set_local_description(now, answer)
            .map_err(invalid_sdp)?;
        let params = crate::media::peer::sink_params(&mut peer.pc);
        let sdp = peer
            .pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| internal("no local description after answering"))?;
        self.core.set_sink(SinkId(key as u64), params);
        Ok(sdp)
    }

    /// Points every connected WHEP player at its source: the publisher it asked for, or the
    /// publisher that joined first. A player whose source leaves moves to the next one without
    /// a break in its RTP streams.
    pub(super) fn choose_whep_sources(&mut self, now: Instant, _out: &mut Egress) {
        let players: Vec<(String, Option<String>, usize)> = self
            .roster
            .local
            .values()
            .filter_map(|p| match (&p.kind, p.subscriber) {
                (ParticipantKind::Whep { source }, Some(key)) => {
                    Some((p.sid.clone(), source.clone(), key))
                }
                _ => None,
            })
            .collect();
        if players.is_empty() {
            return;
        }
        // Publishers here and on other nodes, in the order they joined: listed once for all
        // players.
        let local = self
            .roster
            .local
            .values()
            .map(|p| (p.seq, &p.sid, &p.identity, &p.tracks));
        let remote = self
            .roster
            .remote
            .iter()
            .map(|(sid, r)| (r.seq, sid, &r.identity, &r.tracks));
        let mut publishers: Vec<(u64, String, String, Vec<TrackId>)> = local
            .chain(remote)
            .filter(|(_, _, _, tracks)| !tracks.is_empty())
            .map(|(seq, sid, identity, tracks)| {
                (seq, sid.clone(), identity.clone(), tracks.clone())
            })
            .collect();
        publishers.sort_by_key(|(seq, ..)| *seq);
        for (sid, wanted, key) in players {
            if !self.peers.get(key).is_some_and(|p| p.connected) {
                continue;
            }
            let candidates: Vec<TrackId> = publishers
                .iter()
                .find(|(_, publisher, identity, _)| {
                    *publisher != sid && wanted.as_ref().is_none_or(|w| w == identity)
                })
                .map(|(.., tracks)| tracks.clone())
                .unwrap_or_default();
            for i in 0..self.peers[key].outbound.len() {
                self.retarget_section(now, key, i, &candidates);
            }
        }
    }

    fn retarget_section(&mut self, now: Instant, key: usize, i: usize, candidates: &[TrackId]) {
        let peer = &mut self.peers[key];
        let (kind, sender, current, subscription) = {
            let o = &peer.outbound[i];
            (o.kind, o.sender, o.source, o.subscription)
        };
        let choice = candidates.iter().find_map(|t| {
            let published = self.publications.get(t)?;
            if published.kind != kind {
                return None;
            }
            let pt = payload_type_for(&mut peer.pc, sender, &published.rtc_codec)?;
            Some((*t, pt))
        });
        let Some((track, payload_type)) = choice else {
            return;
        };
        if current != Some(track) {
            if let Some(sub) = subscription {
                match self.core.move_subscription(now, sub, track) {
                    Ok(()) => {
                        peer.outbound[i].source = Some(track);
                        return;
                    }
                    Err(e) => {
                        if !matches!(e, RoomError::Incompatible(_) | RoomError::UnknownTrack(_)) {
                            tracing::warn!(room = %self.name, "move subscription: {e}");
                        }
                        self.core.unsubscribe(sub);
                        peer.outbound[i].subscription = None;
                    }
                }
            }
            // The section belongs to this track from now on, even before its media is here
            // (a remote track is pulled because of it).
            peer.outbound[i].source = Some(track);
        }
        if peer.outbound[i].subscription.is_some() || self.core.track(track).is_none() {
            return;
        }
        let rtx = rtx_for(&mut peer.pc, sender, payload_type);
        let red_payload_type = self
            .publications
            .get(&track)
            .and_then(|p| red_for(&mut peer.pc, sender, p));
        let params = SubscriptionParams {
            ssrc: peer.outbound[i].ssrc,
            payload_type,
            max_layer: self.ctx.default_max_layer,
            rtx,
            red_payload_type,
        };
        match self.core.subscribe(now, track, SinkId(key as u64), params) {
            Ok(sub) => peer.outbound[i].subscription = Some(sub),
            Err(e) => tracing::warn!(room = %self.name, "subscribe: {e}"),
        }
    }
}
