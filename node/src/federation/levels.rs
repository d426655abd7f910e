//! Audio levels across a federation link (speaker ranking): which levels may cross.
//!
//! On a relay link the node a track is published on shares its levels (RFC 6464, every 250
//! ms while it speaks) with every node hosting the room. Across a federation link the gateways
//! stand in for that node:
//!
//! - our nodes share the levels of their tracks with our gateway as with any node hosting the
//!   room (a peer's participants are on `gateway~peer`, reached through `gateway`); the gateway
//!   passes on to each peer the levels of the tracks it announced to that peer in the room's
//!   roster ([`speakers`] of our stage participants' microphones, never a third party's), the
//!   room named as the peer names it;
//! - a peer's levels arrive at our gateway, which keeps those of the peer's tracks written in
//!   our registry for that room (announced by the peer, not stopped by our administrator) and
//!   shares them with its own workers and with every other node of ours hosting the room.
//!
//! Track and participant ids cross unchanged, as in rosters; a level names only the
//! participant's sid, which the peer knows under the identity it was announced with (its
//! pseudonym, for a peer that sees pseudonyms). Each level is put under the participant the
//! track's record names, whatever the frame says: a peer cannot speak for a participant it
//! did not announce as the track's publisher.
//!
//! How many level frames a peer may send is bounded by a [`super::guard::Bucket`]
//! ([`super::guard::LEVELS_RATE`]).

use sfu_control::TrackRecord;
use sfu_proto::relay::AudioLevel;
use std::collections::HashMap;

/// The most levels of one frame looked at: a room's speakers at one instant (a node shares
/// only the tracks speaking, and those that just fell silent).
pub const MAX_LEVELS: usize = 256;

/// A track whose levels may cross.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Speaker {
    /// The sid of its publisher, as its record names it.
    pub participant: String,
    /// Stopped by our administrator (a peer's track): its levels are dropped, not counted as
    /// refused (the peer does not know we stopped it).
    pub stopped: bool,
}

/// The tracks whose levels may cross, in one room with one peer, by track id.
pub type Speakers = HashMap<u64, Speaker>;

/// The audio tracks among `tracks` whose levels are measured (the others are never ranked),
/// `stopped` telling those our administrator stopped.
pub fn speakers<'a>(
    tracks: impl IntoIterator<Item = &'a TrackRecord>,
    stopped: impl Fn(&TrackRecord) -> bool,
) -> Speakers {
    tracks
        .into_iter()
        .filter(|t| t.kind == "audio" && t.audio_levels)
        .filter_map(|t| {
            let id = t.track.parse::<sfu_core::TrackId>().ok()?;
            let s = Speaker {
                participant: t.participant.clone(),
                stopped: stopped(t),
            };
            Some((id.0, s))
        })
        .collect()
}

/// What [`pass`] kept of a frame's levels, and how many it refused.
#[derive(Debug, Default, PartialEq)]
pub struct Passed {
    pub kept: Vec<AudioLevel>,
    /// Levels of tracks not in `allowed`, or beyond [`MAX_LEVELS`].
    pub refused: usize,
}

/// The levels of `levels` about tracks in `allowed` and not stopped (at most [`MAX_LEVELS`]
/// looked at), each under the participant its track's record names, the level clamped to 127
/// (silence).
pub fn pass(levels: &[AudioLevel], allowed: Option<&Speakers>) -> Passed {
    let mut out = Passed {
        refused: levels.len().saturating_sub(MAX_LEVELS),
        ..Default::default()
    };
    for l in levels.iter().take(MAX_LEVELS) {
        match allowed.and_then(|a| a.get(&l.track)) {
            Some(s) if s.stopped => {}
            Some(s) => out.kept.push(AudioLevel {
                track: l.track,
                participant: s.participant.clone(),
                level: l.level.min(127),
            }),
            None => out.refused += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(id: u64, participant: &str, kind: &str, audio_levels: bool) -> TrackRecord {
        TrackRecord {
            track: sfu_core::TrackId(id).to_string(),
            participant: participant.into(),
            kind: kind.into(),
            codec_mime: "audio/opus".into(),
            clock_rate: 48000,
            rids: vec![],
            name: String::new(),
            origin: "b2".into(),
            muted: false,
            source: "microphone".into(),
            audio_levels,
            red_payload_type: None,
            worker: 0,
        }
    }

    fn level(track: u64, participant: &str, level: u32) -> AudioLevel {
        AudioLevel {
            track,
            participant: participant.into(),
            level,
        }
    }

    fn speaker(participant: &str) -> Speaker {
        Speaker {
            participant: participant.into(),
            stopped: false,
        }
    }

    #[test]
    fn only_audio_tracks_with_levels_are_speakers() {
        let tracks = [
            track(1, "PA_bob", "audio", true),
            track(2, "PA_bob", "video", true),
            track(3, "PA_carol", "audio", false),
            TrackRecord {
                track: "bogus".into(),
                ..track(4, "PA_dave", "audio", true)
            },
        ];
        let s = speakers(&tracks, |_| false);
        assert_eq!(s, Speakers::from([(1, speaker("PA_bob"))]));
        let s = speakers(&tracks, |t| t.participant == "PA_bob");
        assert!(s[&1].stopped);
    }

    #[test]
    fn levels_cross_for_allowed_tracks_only_under_their_publisher() {
        let mut allowed = Speakers::from([
            (1, speaker("PA_bob")),
            (2, speaker("PA_carol")),
            (3, speaker("PA_dave")),
        ]);
        allowed.get_mut(&3).unwrap().stopped = true;
        let frame = [
            level(1, "PA_bob", 30),
            // Claimed for someone else: put under the track's publisher.
            level(2, "PA_mallory", 40),
            // Not announced in this room (another room's, a stopped track, or made up).
            level(9, "PA_bob", 20),
            // Out of range: silence.
            level(1, "PA_bob", 4000),
            // Stopped here: dropped, not refused.
            level(3, "PA_dave", 10),
        ];
        let p = pass(&frame, Some(&allowed));
        assert_eq!(
            p.kept,
            [
                level(1, "PA_bob", 30),
                level(2, "PA_carol", 40),
                level(1, "PA_bob", 127)
            ]
        );
        assert_eq!(p.refused, 1);
        // A room with no speakers (not mapped, or none announced) passes nothing.
        assert_eq!(
            pass(&frame, None),
            Passed {
                kept: vec![],
                refused: 5
            }
        );
    }

    #[test]
    fn a_frame_is_looked_at_up_to_its_bound() {
        let allowed = Speakers::from([(1, speaker("PA_bob"))]);
        let frame: Vec<AudioLevel> = (0..10_000).map(|_| level(1, "PA_bob", 10)).collect();
        let p = pass(&frame, Some(&allowed));
        assert_eq!((p.kept.len(), p.refused), (MAX_LEVELS, 10_000 - MAX_LEVELS));
    }
}
