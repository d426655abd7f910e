//! Active speakers: who is talking in a room, across all its nodes.
//!
//! Publishers put their audio level in every packet (RFC 6464: 0 is the loudest, 127 silence,
//! in -dBov). Each node smooths the levels of the tracks published on it, shares them with the
//! room's other nodes (see [`Speakers::poll_shared_levels`]), and takes theirs in with
//! [`Speakers::on_shared_level`], so every node ranks the same speakers the same way:
//!
//! 1. tracks speaking now, loudest first;
//! 2. then tracks that spoke before, most recent first;
//! 3. then tracks that never spoke, in the order they were published.
//!
//! The ranking drives the audio top-K (a subscriber hears only the K best-ranked audio
//! tracks), the video last-N (a subscriber sees the video of the N best-ranked participants,
//! plus what it pinned) and the speaker events clients get.
//!
//! Tracks whose publisher sends no levels cannot be ranked; they are never held back by the
//! top-K (a WHIP encoder without the extension must still be heard).

use crate::ids::TrackId;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Louder than this (-dBov) is speech.
const SPEAKING_DBOV: f64 = 50.0;
/// Weight of the past in the per-packet smoothing (about 200 ms at 50 packets per second).
const SMOOTHING: f64 = 0.9;
/// A speaker stays active this long after falling quiet, so pauses between words do not
/// reorder the room.
const HANGOVER: Duration = Duration::from_millis(1000);
/// No packet for this long (DTX, or the track went away) is silence.
const SILENT_AFTER: Duration = Duration::from_millis(300);
/// A shared level older than this is silence (the node that sent it stopped reporting).
const SHARED_STALE: Duration = Duration::from_secs(2);
/// Levels are shared with other nodes at most this often.
const SHARE_PERIOD: Duration = Duration::from_millis(250);

/// Settings of speaker-driven selection.
#[derive(Clone, Copy, Debug)]
pub struct SpeakerConfig {
    /// Audio tracks each subscriber receives (the loudest); 0: all.
    pub top_k: usize,
    /// Participants whose video each subscriber receives (the most recent speakers, plus
    /// pinned tracks and screen shares); 0: all.
    pub last_n: usize,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            top_k: 3,
            last_n: 0,
        }
    }
}

/// One ranked audio track.
#[derive(Clone, Debug, PartialEq)]
pub struct Speaker {
    pub track: TrackId,
    pub participant: Arc<str>,
    /// 0.0 (silence) to 1.0 (full scale), linear amplitude.
    pub level: f32,
}

#[derive(Clone, Debug)]
struct Entry {
    participant: Arc<str>,
    /// Linear amplitude, smoothed.
    loudness: f64,
    last_level_at: Option<Instant>,
    last_active: Option<Instant>,
    active: bool,
    /// Published on this node (its level is measured here and shared).
    local: bool,
    /// Publish order, for tracks that never spoke.
    order: u64,
    /// Last level shared with other nodes (-dBov).
    shared: Option<u8>,
}

fn linear(dbov: f64) -> f64 {
    10f64.powf(-dbov / 20.0)
}

fn dbov(linear: f64) -> u8 {
    if linear <= 0.0 {
        return 127;
    }
    (-20.0 * linear.log10()).clamp(0.0, 127.0).round() as u8
}

/// See the module documentation.
#[derive(Default)]
pub struct Speakers {
    entries: HashMap<TrackId, Entry>,
    next_order: u64,
    /// Tracks in rank order, recomputed by [`Speakers::handle_timeout`].
    ranking: Vec<TrackId>,
    rank: HashMap<TrackId, usize>,
    /// Active speakers as last reported to clients.
    reported: Vec<TrackId>,
    changed: bool,
    next_share: Option<Instant>,
}

impl Speakers {
    /// A track with levels appeared (`local`: published on this node).
    pub fn add_track(&mut self, track: TrackId, participant: Arc<str>, local: bool) {
        let order = self.next_order;
        let e = self.entries.entry(track).or_insert_with(|| Entry {
            participant,
            loudness: 0.0,
            last_level_at: None,
            last_active: None,
            active: false,
            local,
            order,
            shared: None,
        });
        e.local |= local;
        self.next_order += 1;
    }

    pub fn remove_track(&mut self, track: TrackId) {
        self.entries.remove(&track);
        self.rank.remove(&track);
        self.ranking.retain(|t| *t != track);
    }

    /// Whether the track's level is known (it is ranked).
    pub fn has(&self, track: TrackId) -> bool {
        self.entries.contains_key(&track)
    }

    /// One packet's level (-dBov) of a track published here.
    pub fn on_level(&mut self, now: Instant, track: TrackId, level: u8) {
        let Some(e) = self.entries.get_mut(&track) else {
            return;
        };
        let l = linear(level.min(127) as f64);
        let l = if level >= 127 { 0.0 } else { l };
        e.loudness = SMOOTHING * e.loudness + (1.0 - SMOOTHING) * l;
        e.last_level_at = Some(now);
    }

    /// A smoothed level shared by the node a track is published on.
    pub fn on_shared_level(
        &mut self,
        now: Instant,
        track: TrackId,
        participant: Arc<str>,
        level: u8,
    ) {
        self.add_track(track, participant, false);
        if let Some(e) = self.entries.get_mut(&track)
            && !e.local
        {
            e.loudness = if level >= 127 {
                0.0
            } else {
                linear(level as f64)
            };
            e.last_level_at = Some(now);
        }
    }

    /// Updates activity and the ranking; call periodically.
    pub fn handle_timeout(&mut self, now: Instant) {
        for e in self.entries.values_mut() {
            let stale = if e.local { SILENT_AFTER } else { SHARED_STALE };
            if e.last_level_at
                .is_none_or(|t| now.saturating_duration_since(t) > stale)
            {
                e.loudness = 0.0;
            }
            if e.loudness >= linear(SPEAKING_DBOV) {
                e.last_active = Some(now);
                e.active = true;
            } else if e
                .last_active
                .is_none_or(|t| now.saturating_duration_since(t) > HANGOVER)
            {
                e.active = false;
            }
        }
        let mut ranking: Vec<TrackId> = self.entries.keys().copied().collect();
        ranking.sort_by(|a, b| {
            let (ea, eb) = (&self.entries[a], &self.entries[b]);
            eb.active
                .cmp(&ea.active)
                .then_with(|| {
                    if ea.active {
                        eb.loudness.total_cmp(&ea.loudness)
                    } else {
                        eb.last_active.cmp(&ea.last_active)
                    }
                })
                .then_with(|| ea.order.cmp(&eb.order))
        });
        self.rank = ranking.iter().enumerate().map(|(i, t)| (*t, i)).collect();
        self.ranking = ranking;
        let active: Vec<TrackId> = self
            .ranking
            .iter()
            .copied()
            .filter(|t| self.entries[t].active)
            .collect();
        if active != self.reported {
            self.reported = active;
            self.changed = true;
        }
    }

    /// The active speakers, loudest first, if they changed since last asked.
    pub fn poll_changed(&mut self) -> Option<Vec<Speaker>> {
        if !std::mem::take(&mut self.changed) {
            return None;
        }
        Some(
            self.reported
                .iter()
                .map(|t| {
                    let e = &self.entries[t];
                    Speaker {
                        track: *t,
                        participant: e.participant.clone(),
                        level: e.loudness.min(1.0) as f32,
                    }
                })
                .collect(),
        )
    }

    /// Levels of tracks published here that other nodes should learn (-dBov), at most every
    /// [`SHARE_PERIOD`]: those speaking, and those that fell silent since last shared.
    pub fn poll_shared_levels(&mut self, now: Instant) -> Option<Vec<(TrackId, Arc<str>, u8)>> {
        if self.next_share.is_some_and(|t| now < t) {
            return None;
        }
        self.next_share = Some(now + SHARE_PERIOD);
        let mut out = Vec::new();
        for (track, e) in &mut self.entries {
            if !e.local {
                continue;
            }
            let level = dbov(e.loudness);
            let speaking = e.loudness >= linear(SPEAKING_DBOV);
            // Speaking levels are repeated (they also keep the entry fresh remotely); silence
            // once.
            if speaking || e.shared.is_some_and(|s| s < 127) {
                out.push((
                    *track,
                    e.participant.clone(),
                    if speaking { level } else { 127 },
                ));
                e.shared = Some(if speaking { level } else { 127 });
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// A track's place in the ranking (0 is the best), if it is ranked.
    pub fn rank(&self, track: TrackId) -> Option<usize> {
        self.rank.get(&track).copied()
    }

    /// Participants in speaker order (each once, by their best-ranked track).
    pub fn participants(&self) -> Vec<Arc<str>> {
        let mut seen: Vec<Arc<str>> = Vec::new();
        for t in &self.ranking {
            let p = &self.entries[t].participant;
            if !seen.contains(p) {
                seen.push(p.clone());
            }
        }
        seen
    }

    pub fn is_active(&self, track: TrackId) -> bool {
        self.entries.get(&track).is_some_and(|e| e.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut Speakers, now: Instant, track: u64, level: u8, packets: u32) -> Instant {
        let mut t = now;
        for _ in 0..packets {
            s.on_level(t, TrackId(track), level);
            t += Duration::from_millis(20);
        }
        t
    }

    #[test]
    fn ranks_speaking_tracks_by_loudness_then_recency_then_order() {
        let t0 = Instant::now();
        let mut s = Speakers::default();
        for (t, p) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
            s.add_track(TrackId(t), p.into(), true);
        }
        s.handle_timeout(t0);
        assert_eq!(
            s.rank(TrackId(1)),
            Some(0),
            "publish order while nobody spoke"
        );
        // c speaks, then falls silent; b and d speak, d louder.
        let t1 = feed(&mut s, t0, 3, 30, 25);
        s.handle_timeout(t1);
        assert_eq!(s.rank(TrackId(3)), Some(0));
        let t2 = t1 + Duration::from_secs(2);
        feed(&mut s, t2 - Duration::from_millis(500), 2, 40, 25);
        feed(&mut s, t2 - Duration::from_millis(500), 4, 20, 25);
        s.handle_timeout(t2);
        let order: Vec<u64> = (1..=4)
            .map(|t| s.rank(TrackId(t)).unwrap() as u64)
            .collect();
        // d (loudest, active), b (active), c (spoke before), a (never).
        assert_eq!(order, vec![3, 1, 2, 0]);
        assert!(!s.is_active(TrackId(3)), "c's hangover ended");
        let changed = s.poll_changed().unwrap();
        assert_eq!(
            changed.iter().map(|x| x.track.0).collect::<Vec<_>>(),
            vec![4, 2]
        );
        assert!(s.poll_changed().is_none());
        let names: Vec<String> = s.participants().iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["d", "b", "c", "a"]);
    }

    #[test]
    fn levels_are_shared_while_speaking_and_once_when_silent() {
        let t0 = Instant::now();
        let mut s = Speakers::default();
        s.add_track(TrackId(1), "a".into(), true);
        let t1 = feed(&mut s, t0, 1, 20, 50);
        let shared = s.poll_shared_levels(t1).unwrap();
        assert_eq!(shared.len(), 1);
        assert!(shared[0].2 < 30, "{shared:?}");
        assert!(
            s.poll_shared_levels(t1 + Duration::from_millis(10))
                .is_none(),
            "rate limited"
        );
        let t2 = t1 + Duration::from_secs(1);
        s.handle_timeout(t2);
        assert_eq!(s.poll_shared_levels(t2).unwrap()[0].2, 127, "silence, once");
        assert!(s.poll_shared_levels(t2 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn shared_levels_rank_remote_tracks_and_expire() {
        let t0 = Instant::now();
        let mut s = Speakers::default();
        s.add_track(TrackId(1), "local".into(), true);
        s.on_shared_level(t0, TrackId(9), "remote".into(), 25);
        s.handle_timeout(t0);
        assert_eq!(s.rank(TrackId(9)), Some(0));
        assert!(s.is_active(TrackId(9)));
        s.handle_timeout(t0 + Duration::from_secs(4));
        assert!(!s.is_active(TrackId(9)), "stale");
    }
}
