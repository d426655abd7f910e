//! Publisher peer connections: offer/answer, and turning their media sections into tracks.

mod simulcast;

use crate::media::egress::Effect;
use crate::media::egress::Egress;
use crate::media::peer::{Direction, add_host_candidates};
use crate::media::room::{Inbound, LocalRoom, Origin, Published};
use crate::signaling::protocol::{ErrorCode, ServerMessage, SignalError, TrackSourceName};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use sfu_core::{Codec, MediaKind, TrackId, TrackInfo, TrackSource};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// RFC 6464 client-to-mixer audio level.
pub(super) const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

pub(super) fn core_source(s: TrackSourceName) -> TrackSource {
    match s {
        TrackSourceName::Camera => TrackSource::Camera,
        TrackSourceName::Microphone => TrackSource::Microphone,
        TrackSourceName::ScreenShare => TrackSource::ScreenShare,
    }
}

impl LocalRoom {
    /// The registry record of a track published here.
    pub(super) fn track_record(&self, p: &Published) -> sfu_control::TrackRecord {
        let view = p.view();
        sfu_control::TrackRecord {
            track: p.id.to_string(),
            participant: p.owner.clone(),
            kind: view.kind.to_owned(),
            codec_mime: view.codec,
            clock_rate: info_clock(p),
            rids: p.rids.clone(),
            name: p.name.clone(),
            origin: self.ctx.node_id.to_string(),
            muted: p.muted,
            source: p.source.as_str().to_owned(),
            audio_levels: p.audio_levels,
            red_payload_type: p.red_payload_type,
            worker: self.ctx.worker as u16,
        }
    }
}

/// The clock rate of a published track (codec default when SDP gave none).
pub(super) fn info_clock(p: &Published) -> u32 {
    if p.rtc_codec.clock_rate > 0 {
        p.rtc_codec.clock_rate
    } else {
        Codec::from_mime(&p.rtc_codec.mime_type).default_clock_rate(p.kind)
    }
}

pub(super) fn invalid_sdp(e: impl std::fmt::Display) -> SignalError {
    SignalError::new(ErrorCode::InvalidSdp, format!("invalid SDP: {e}"))
}

/// Media sections a client's offer may have. A publisher sends a few tracks (microphone,
/// camera, a screen and its audio), a WHEP player receives two; each section becomes a track
/// or subscription with its own state (a retransmission cache per layer), so a client may not
/// ask for hundreds.
pub const MAX_OFFERED_SECTIONS: usize = 16;
/// Simulcast layers (RIDs) a media section may have: three, as every browser sends, and one
/// spare.
pub const MAX_RIDS_PER_SECTION: usize = 4;

/// A client's offer, refused before it is parsed if it asks for more than the node gives any
/// client (see [`MAX_OFFERED_SECTIONS`]).
pub(super) fn client_offer(sdp: String) -> Result<RTCSessionDescription, SignalError> {
    let (mut sections, mut rids) = (0usize, 0usize);
    for line in sdp.lines() {
        if line.starts_with("m=") {
            sections += 1;
            rids = 0;
        } else if line.starts_with("a=rid:") {
            rids += 1;
        }
        if sections > MAX_OFFERED_SECTIONS {
            return Err(SignalError::new(
                ErrorCode::InvalidSdp,
                format!("the offer has more than {MAX_OFFERED_SECTIONS} media sections"),
            ));
        }
        if rids > MAX_RIDS_PER_SECTION {
            return Err(SignalError::new(
                ErrorCode::InvalidSdp,
                format!("a media section has more than {MAX_RIDS_PER_SECTION} simulcast layers"),
            ));
        }
    }
    RTCSessionDescription::offer(sdp).map_err(invalid_sdp)
}

pub(super) fn internal(e: impl std::fmt::Display) -> SignalError {
    SignalError::new(ErrorCode::Internal, e.to_string())
}

/// A media section the publisher sends on, as negotiated.
struct Offered {
    rtc_track: String,
    kind: MediaKind,
    codec: RTCRtpCodec,
    rids: Vec<String>,
    /// Negotiated id of the audio level header extension.
    audio_level_ext: Option<u8>,
    /// Payload type of RED, if negotiated (the publisher may send RED instead of plain Opus).
    red_payload_type: Option<u8>,
}

/// Whether a negotiated codec carries media (rather than retransmissions or FEC).
fn is_media_codec(mime: &str) -> bool {
    let sub = mime.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
    !matches!(
        sub.as_str(),
        "rtx" | "red" | "ulpfec" | "flexfec" | "flexfec-03"
    )
}

/// Orders simulcast RIDs from lowest to highest quality. Browsers and SDKs use `q/h/f`
/// (quarter, half, full) or `l/m/h` (low, mid, high); other names keep their SDP order.
pub(super) fn order_rids(mut rids: Vec<String>) -> Vec<String> {
    let lmh = rids.iter().any(|r| r == "l" || r == "m");
    let rank = |rid: &str| -> usize {
        match rid.to_ascii_lowercase().as_str() {
            "q" | "l" | "low" | "0" => 0,
            "h" if !lmh => 1,
            "m" | "mid" | "medium" | "half" | "1" => 1,
            "h" | "f" | "high" | "full" | "2" => 2,
            _ => 3,
        }
    };
    rids.sort_by_key(|r| rank(r));
    rids
}

/// Whether an offer sends audio or video (a media section that is not `recvonly` or
/// `inactive`, nor rejected with port 0).
fn offers_media(sdp: &str) -> bool {
    let mut media = false;
    let mut sends = false;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if media && sends {
                return true;
            }
            let mut fields = m.split(' ');
            let kind = fields.next().unwrap_or("");
            let port = fields.next().unwrap_or("0");
            media = (kind == "audio" || kind == "video") && port != "0";
            sends = true;
        } else if line == "a=recvonly" || line == "a=inactive" {
            sends = false;
        }
    }
    media && sends
}

impl LocalRoom {
    /// Applies a publisher's offer and returns the answer.
    pub fn publish(
        &mut self,
        now: Instant,
        sid: &str,
        sdp: String,
        (sources, track_sids): (HashMap<String, TrackSourceName>, HashMap<String, TrackId>),
        out: &mut Egress,
    ) -> Result<String, SignalError> {
        if let Some(p) = self.roster.local.get_mut(sid) {
            p.sources.extend(sources);
            p.track_sids.extend(track_sids);
        }
        let p = self.participant(sid)?;
        // A connection for data channels only (LiveKit's clients open theirs on the
        // publisher connection, audience members too) publishes nothing.
        if !p.can_publish && offers_media(&sdp) {
            return Err(SignalError::new(
                ErrorCode::Forbidden,
                "the access token does not allow publishing",
            ));
        }
        let existing = p.publisher;
        // A renegotiation keeps the simulcast layers webrtc-rs already receives (see
        // `simulcast`).
        let (sdp, held) = match existing.and_then(|k| self.peers.get(k)) {
            Some(peer) => simulcast::hold_bound(&sdp, |track, rids| {
                peer.inbound.get(track).is_some_and(|i| {
                    rids.len() == i.rids.len() && rids.iter().all(|r| i.rids.contains(r))
                })
            }),
            None => (sdp, Vec::new()),
        };
        let offer = client_offer(sdp)?;
        let key = match existing {
            Some(k) => k,
            None => self.create_peer(now, sid, Direction::Publish)?,
        };
        match self.answer_publisher(now, key, offer) {
            Ok(answer) => {
                self.sync_inbound(now, key, out);
                self.drive(now, key, out);
                Ok(simulcast::restore(&answer, &held))
            }
            Err(e) => {
                if existing.is_none() {
                    self.remove_peer(now, key, out);
                }
                Err(e)
            }
        }
    }

    fn answer_publisher(
        &mut self,
        now: Instant,
        key: usize,
        offer: RTCSessionDescription,
    ) -> Result<String, SignalError> {
        let candidates = self.ctx.candidates.clone();
        let peer = &mut self.peers[key];
        peer.pc
            .set_remote_description(now, offer)
            .map_err(invalid_sdp)?;
        if !peer.described {
            add_host_candidates(&mut peer.pc, &candidates).map_err(internal)?;
            peer.described = true;
        }
        let answer = peer.pc.create_answer(None).map_err(invalid_sdp)?;
        peer.pc
            .set_local_description(now, answer)
            .map_err(invalid_sdp)?;
        peer.pc
            .local_description()
            .map(|d| d.sdp)
            .ok_or_else(|| internal("no local description after answering"))
    }

    /// Media sections the publisher sends on after the last negotiation.
    fn offered_sections(&mut self, key: usize) -> Vec<Offered> {
        let pc = &mut self.peers[key].pc;
        let ids: Vec<_> = pc.get_transceivers().collect();
        let mut found = Vec::new();
        for id in ids {
            let Some(t) = pc.rtp_transceiver(id) else {
                continue;
            };
            if !t.current_direction().has_recv() {
                continue;
            }
            let Some(receiver) = t.receiver() else {
                continue;
            };
            let Some(mut r) = pc.rtp_receiver(receiver) else {
                continue;
            };
            let track = r.track();
            let rtc_track = track.track_id().clone();
            let kind = match track.kind() {
                RtpCodecKind::Audio => MediaKind::Audio,
                RtpCodecKind::Video => MediaKind::Video,
                _ => continue,
            };
            let rids: Vec<String> = track
                .codings()
                .iter()
                .map(|c| c.rtp_coding_parameters.rid.clone())
                .filter(|r| !r.is_empty())
                .collect();
            let params = &r.get_parameters().rtp_parameters;
            let Some(codec) = params
                .codecs
                .iter()
                .find(|c| is_media_codec(&c.rtp_codec.mime_type))
                .map(|c| c.rtp_codec.clone())
            else {
                continue;
            };
            let audio_level_ext = params
                .header_extensions
                .iter()
                .find(|h| h.uri == AUDIO_LEVEL_URI)
                .and_then(|h| u8::try_from(h.id).ok());
            let red_payload_type = crate::media::peer::red_payload_type(&params.codecs);
            found.push(Offered {
                rtc_track,
                kind,
                codec,
                rids: order_rids(rids),
                audio_level_ext,
                red_payload_type,
            });
        }
        found
    }

    /// Publishes new media sections as tracks and unpublishes those that stopped.
    fn sync_inbound(&mut self, now: Instant, key: usize, out: &mut Egress) {
        let offered = self.offered_sections(key);
        let gone: Vec<TrackId> = self.peers[key]
            .inbound
            .iter()
            .filter(|(rtc_track, _)| !offered.iter().any(|o| &o.rtc_track == *rtc_track))
            .map(|(_, i)| i.track)
            .collect();
        for track in gone {
            self.unpublish_track(now, track, out);
        }
        for o in offered {
            if self.peers[key].inbound.contains_key(&o.rtc_track) {
                continue;
            }
            self.publish_track(now, key, o, out);
        }
    }

    fn publish_track(&mut self, now: Instant, key: usize, o: Offered, out: &mut Egress) {
        let codec = Codec::from_mime(&o.codec.mime_type);
        let layers = o.rids.len().max(1);
        let owner = self.peers[key].participant.clone();
        // An announced sid is used once, and only if no track has it (sids are random u64s;
        // a client repeating one must not take over another track).
        let announced = self
            .roster
            .local
            .get_mut(&owner)
            .and_then(|p| p.track_sids.remove(&o.rtc_track))
            .filter(|id| !self.publications.contains(id));
        let id = announced.unwrap_or_else(|| TrackId(rand::random()));
        let source = self
            .roster
            .local
            .get(&owner)
            .and_then(|p| p.sources.get(&o.rtc_track).copied())
            .unwrap_or(match o.kind {
                MediaKind::Audio => TrackSourceName::Microphone,
                MediaKind::Video => TrackSourceName::Camera,
            });
        let audio_levels = o.kind == MediaKind::Audio && o.audio_level_ext.is_some();
        let mut info = TrackInfo::new(
            id,
            o.kind,
            codec,
            if o.codec.clock_rate > 0 {
                o.codec.clock_rate
            } else {
                codec.default_clock_rate(o.kind)
            },
            layers,
        );
        info.participant = Arc::from(owner.as_str());
        info.source = core_source(source);
        info.audio_level_ext = o.audio_level_ext.filter(|_| audio_levels);
        info.audio_levels = audio_levels;
        info.red_payload_type = o.red_payload_type;
        if let Err(e) = self.core.add_track(now, info) {
            tracing::error!(room = %self.name, "adding track: {e}");
            return;
        }
        let rids = if o.rids.is_empty() {
            vec![String::new()]
        } else {
            o.rids.clone()
        };
        self.peers[key].inbound.insert(
            o.rtc_track.clone(),
            Inbound {
                track: id,
                ssrcs: vec![None; rids.len()],
                rx: vec![Default::default(); rids.len()],
                rids,
            },
        );
        let published = Published {
            id,
            owner: owner.clone(),
            kind: o.kind,
            rtc_codec: o.codec,
            name: o.rtc_track,
            rids: o.rids,
            origin: Origin::Local { peer: key },
            muted: false,
            source,
            audio_levels,
            red_payload_type: o.red_payload_type,
        };
        let view = published.view();
        out.effects.push(Effect::TrackPublished {
            room: self.name.clone(),
            record: self.track_record(&published),
            info: sfu_proto::relay::TrackInfo {
                kind: view.kind.to_owned(),
                codec_mime: view.codec.clone(),
                clock_rate: info_clock(&published),
                layers: layers as u32,
            },
        });
        self.publications.insert(published);
        if let Some(p) = self.roster.local.get_mut(&owner) {
            p.tracks.push(id);
        }
        tracing::info!(room = %self.name, participant = %owner, track = %id, kind = ?o.kind, codec = %view.codec, layers, "track published");
        self.broadcast(&owner, &ServerMessage::TrackPublished { track: view });
        self.on_track_published(now, id, out);
    }

    /// Ends a track: its subscriptions, its place in the publisher's list, its announcement.
    pub(super) fn unpublish_track(&mut self, now: Instant, track: TrackId, out: &mut Egress) {
        self.release_program_track(now, track);
        let Some(published) = self.publications.remove(&track) else {
            return;
        };
        for (subscription, sink) in self.core.remove_track(track) {
            if crate::media::room::record::is_recorder(sink) {
                self.recording_ended(sink);
            } else if sfu_relay::core::decode_sink(sink).is_none() {
                self.on_subscription_ended(now, sink.0 as usize, subscription, out);
            }
        }
        match &published.origin {
            Origin::Local { peer } => {
                if let Some(peer) = self.peers.get_mut(*peer) {
                    peer.inbound.retain(|_, i| i.track != track);
                }
                out.effects.push(Effect::TrackUnpublished {
                    room: self.name.clone(),
                    track,
                    kind: published.view().kind,
                    participant: published.owner.clone(),
                });
            }
            Origin::Remote { .. } => {
                self.demand.forget(&track);
                self.core.remove_remote_speaker(track);
                out.effects.push(Effect::Forget {
                    room: self.name.clone(),
                    track,
                });
            }
        }
        if let Some(p) = self.roster.local.get_mut(&published.owner) {
            p.tracks.retain(|t| *t != track);
        }
        if let Some(r) = self.roster.remote.get_mut(&published.owner) {
            r.tracks.retain(|t| *t != track);
        }
        tracing::info!(room = %self.name, participant = %published.owner, %track, "track unpublished");
        self.broadcast(
            &published.owner,
            &ServerMessage::TrackUnpublished {
                track: track.to_string(),
                participant: published.owner.clone(),
            },
        );
        self.choose_whep_sources(now, out);
    }

    /// The `unpublish` request of a WebSocket client.
    pub fn unpublish(
        &mut self,
        now: Instant,
        sid: &str,
        track: &str,
        out: &mut Egress,
    ) -> Result<(), SignalError> {
        let id: TrackId = track
            .parse()
            .map_err(|_| SignalError::new(ErrorCode::BadRequest, "malformed track sid"))?;
        match self.publications.get(&id) {
            Some(t) if t.owner == sid => {
                self.unpublish_track(now, id, out);
                Ok(())
            }
            Some(_) => Err(SignalError::new(ErrorCode::Forbidden, "not your track")),
            None => Err(SignalError::new(ErrorCode::NotFound, "no such track")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{offers_media, order_rids};

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn data_only_and_receive_only_offers_send_no_media() {
        let data = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:0\r\n";
        assert!(!offers_media(data));
        let recv = format!("{data}m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n");
        assert!(!offers_media(&recv));
        let send = format!("{recv}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\n");
        assert!(offers_media(&send));
        assert!(offers_media(
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\n"
        ));
        assert!(!offers_media("m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"));
    }

    #[test]
    fn rids_are_ordered_by_quality() {
        assert_eq!(order_rids(v(&["f", "h", "q"])), v(&["q", "h", "f"]));
        assert_eq!(order_rids(v(&["h", "m", "l"])), v(&["l", "m", "h"]));
        assert_eq!(order_rids(v(&["2", "0", "1"])), v(&["0", "1", "2"]));
        assert_eq!(order_rids(v(&["b", "a"])), v(&["b", "a"]));
    }
}
