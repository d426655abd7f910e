//! SDP from webrtc-rs acting as a client: WHIP/WHEP offers, and answers to a node's offers on
//! a WebSocket subscriber connection.

use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use std::time::Instant;

fn peer() -> RTCPeerConnection {
    let mut me = MediaEngine::default();
    me.register_default_codecs().unwrap();
    RTCPeerConnectionBuilder::new()
        .with_media_engine(me)
        .build(Instant::now())
        .unwrap()
}

/// An offer with an audio and a video section: sending (WHIP) or receive-only (WHEP).
pub fn offer(send: bool) -> String {
    let mut pc = peer();
    for (i, kind) in [RtpCodecKind::Audio, RtpCodecKind::Video]
        .into_iter()
        .enumerate()
    {
        if send {
            pc.add_track(rtc::media_stream::MediaStreamTrack::new(
                "s".into(),
                format!("t{i}"),
                format!("t{i}"),
                kind,
                vec![RTCRtpEncodingParameters {
                    rtp_coding_parameters: RTCRtpCodingParameters {
                        ssrc: Some(7 + i as u32),
                        ..Default::default()
                    },
                    ..Default::default()
                }],
            ))
            .unwrap();
        } else {
            pc.add_transceiver_from_kind(
                kind,
                Some(RTCRtpTransceiverInit {
                    direction: RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .unwrap();
        }
    }
    let o = pc.create_offer(None).unwrap();
    pc.set_local_description(Instant::now(), o).unwrap();
    pc.local_description().unwrap().sdp
}

/// The client side of a subscriber connection: answers the node's successive offers.
pub struct Answerer {
    pc: RTCPeerConnection,
}

impl Default for Answerer {
    fn default() -> Self {
        Self { pc: peer() }
    }
}

impl Answerer {
    pub fn answer(&mut self, offer: &str) -> String {
        let now = Instant::now();
        self.pc
            .set_remote_description(now, RTCSessionDescription::offer(offer.to_owned()).unwrap())
            .unwrap();
        let a = self.pc.create_answer(None).unwrap();
        self.pc.set_local_description(now, a).unwrap();
        self.pc.local_description().unwrap().sdp
    }
}
