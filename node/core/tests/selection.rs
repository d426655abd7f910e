//! Speaker-driven selection in one room, in virtual time: video last-N follows who spoke last,
//! pinned tracks and screen shares are exempt, and active speakers' video goes first when
//! bandwidth is short.

use bytes::Bytes;
use sfu_core::{
    Codec, MediaKind, Packet, Room, RoomConfig, SinkId, SpeakerConfig, SubscriptionId,
    SubscriptionParams, SubscriptionSettings, TrackId, TrackInfo, TrackSource, WallClock,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const SINK: SinkId = SinkId(9);
const LEVEL_EXT: u8 = 1;

struct Harness {
    room: Room,
    now: Instant,
    /// Participant → its video subscription.
    video: HashMap<&'static str, SubscriptionId>,
}

fn audio_track(p: usize) -> TrackId {
    TrackId(100 + p as u64)
}

fn video_track(p: usize) -> TrackId {
    TrackId(200 + p as u64)
}

const PEOPLE: [&str; 5] = ["p0", "p1", "p2", "p3", "screen"];

impl Harness {
    fn new(last_n: usize) -> Self {
        let now = Instant::now();
        let mut room = Room::new(
            WallClock::new(now, Duration::ZERO),
            RoomConfig {
                speakers: SpeakerConfig { top_k: 3, last_n },
                ..Default::default()
            },
        );
        let mut video = HashMap::new();
        for (i, p) in PEOPLE.iter().enumerate() {
            let mut a = TrackInfo::new(audio_track(i), MediaKind::Audio, Codec::Opus, 48_000, 1);
            a.participant = (*p).into();
            a.audio_levels = true;
            a.audio_level_ext = Some(LEVEL_EXT);
            room.add_track(now, a).unwrap();
            let mut v = TrackInfo::new(video_track(i), MediaKind::Video, Codec::Vp8, 90_000, 1);
            v.participant = (*p).into();
            if *p == "screen" {
                v.source = TrackSource::ScreenShare;
            }
            room.add_track(now, v).unwrap();
            let params = SubscriptionParams {
                ssrc: 1000 + i as u32,
                payload_type: 96,
                max_layer: 0,
                rtx: None,
                red_payload_type: None,
            };
            video.insert(
                *p,
                room.subscribe(now, video_track(i), SINK, params).unwrap(),
            );
        }
        Harness { room, now, video }
    }

    /// Runs `secs`, the named participants speaking (everyone else silent).
    fn run(&mut self, secs: f64, speaking: &[&str]) {
        let end = self.now + Duration::from_secs_f64(secs);
        let mut seq = 0u16;
        while self.now < end {
            self.now += Duration::from_millis(20);
            seq = seq.wrapping_add(1);
            for (i, p) in PEOPLE.iter().enumerate() {
                let level = if speaking.contains(p) { 20 } else { 127 };
                let mut packet = Packet {
                    payload: Bytes::from_static(&[0xfc; 40]),
                    ..Default::default()
                };
                packet.header.sequence_number = seq;
                packet.header.extension = true;
                packet.header.extension_profile = 0xBEDE;
                packet
                    .header
                    .set_extension(LEVEL_EXT, Bytes::from(vec![level]))
                    .unwrap();
                self.room.handle_rtp(self.now, audio_track(i), 0, packet);
            }
            while self.room.poll_timeout().is_some_and(|t| t <= self.now) {
                self.room.handle_timeout(self.now);
            }
            while self.room.poll_output().is_some() {}
        }
    }

    /// Participants whose video the subscriber receives.
    fn seen(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = PEOPLE
            .iter()
            .copied()
            .filter(|p| {
                self.room
                    .subscription(self.video[p])
                    .is_some_and(|s| s.desired_layer().is_some())
            })
            .collect();
        v.sort_unstable();
        v
    }
}

#[test]
fn last_n_follows_the_most_recent_speakers_and_spares_pins_and_screen_shares() {
    let mut h = Harness::new(2);
    h.run(1.0, &[]);
    // Nobody spoke: the first two publishers, plus the screen share.
    assert_eq!(h.seen(), vec!["p0", "p1", "screen"]);
    h.run(2.0, &["p2"]);
    h.run(2.0, &["p3"]);
    // p3 speaks now, p2 spoke before.
    assert_eq!(h.seen(), vec!["p2", "p3", "screen"]);
    // Pinning p0 shows it whatever the speakers.
    h.room
        .update_subscription(
            h.now,
            h.video["p0"],
            SubscriptionSettings {
                max_layer: Some(0),
                pinned: true,
            },
        )
        .unwrap();
    assert_eq!(h.seen(), vec!["p0", "p2", "p3", "screen"]);
    // p1 speaks: it displaces p2, the least recent speaker.
    h.run(2.0, &["p1"]);
    assert_eq!(h.seen(), vec!["p0", "p1", "p3", "screen"]);
}

#[test]
fn without_last_n_everyone_is_seen() {
    let mut h = Harness::new(0);
    h.run(2.0, &["p3"]);
    assert_eq!(h.seen(), vec!["p0", "p1", "p2", "p3", "screen"]);
}
