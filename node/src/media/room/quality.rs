//! Connection quality (LiveKit's `ConnectionQualityUpdate`): every few seconds, each
//! participant here is scored from what the node knows of its two connections, and told its
//! quality with those of the room's other announced participants. Those of other workers and
//! nodes come with their registry records: an announced participant's record is rewritten
//! when its quality changes, at most every [`WRITE_PERIOD`] (a registry write and a watch event
//! on every node of the room each time).
//!
//! What goes in, per scoring window:
//! - what it publishes: the loss on each received stream, from sequence numbers (RFC 3550
//!   A.3: expected less received);
//! - what it receives: the loss fraction and jitter its receiver reports give for each stream
//!   the node sends it, and the round trip from them (the report's LSR and DLSR against when
//!   the node sent that sender report).
//!
//! The score is LiveKit's (livekit-server's `connectionquality` package): a simplified E-model,
//! `100 - delay effect - loss% * weight`, where the delay is RTT / 2 + 2 * jitter (ms) and its
//! effect is delay / 40, or (delay - 120) / 10 above 160 ms; the loss weight is 8 for audio
//! (2.5% loss leaves GOOD, 7.5% POOR) and 2 for video (10%, 30%). A participant's score is its
//! worst stream's, smoothed (a rise counts 0.4, a fall 0.8 of the new value), and maps to
//! EXCELLENT above 80, GOOD above 40, POOR above 20, LOST below. A window with nothing to
//! judge (nothing published or reported) keeps the score, as LiveKit keeps muted tracks'.

use crate::media::room::LocalRoom;
use crate::signaling::protocol::{QualityView, ServerMessage};
use sfu_core::MediaKind;
use std::time::{Duration, Instant};

/// How often participants are scored and told.
pub const PERIOD: Duration = Duration::from_secs(5);
/// How often a participant's registry record is rewritten at most for its quality.
pub const WRITE_PERIOD: Duration = Duration::from_secs(10);
/// Participants' qualities in one message at most (the stage of a large room is small; the
/// rest hear their own only).
const MAX_TOLD: usize = 100;
/// Streams whose last sender report a subscriber connection remembers.
const MAX_STREAMS: usize = 64;

/// The loss on one received RTP stream.
#[derive(Clone, Debug, Default)]
pub struct RxLoss {
    /// Extended highest sequence number, and the first.
    max: Option<u64>,
    base: u64,
    received: u64,
    /// `expected` and `received` at the start of the window.
    expected_prior: u64,
    received_prior: u64,
}

impl RxLoss {
    /// A packet with this sequence number arrived.
    pub fn on_packet(&mut self, seq: u16) {
        self.received += 1;
        match self.max {
            None => {
                // Extended numbers start one cycle up, so a reordered first packet stays
                // positive.
                let ext = 65536 + u64::from(seq);
                self.max = Some(ext);
                self.base = ext;
            }
            Some(max) => {
                let delta = seq.wrapping_sub(max as u16) as i16;
                let ext = max.saturating_add_signed(i64::from(delta));
                if ext > max {
                    self.max = Some(ext);
                }
                self.base = self.base.min(ext);
            }
        }
    }

    /// Packets expected and lost since the last call.
    fn take_window(&mut self) -> (u64, u64) {
        let expected = self.max.map_or(0, |m| m - self.base + 1);
        let (e, r) = (
            expected - self.expected_prior.min(expected),
            self.received - self.received_prior,
        );
        self.expected_prior = expected;
        self.received_prior = self.received;
        (e, e.saturating_sub(r))
    }
}

/// What a subscriber's receiver reports said in the window.
#[derive(Debug, Default)]
pub struct PeerReports {
    /// Sender reports the node sent: SSRC, their NTP time's middle 32 bits (what a receiver
    /// report echoes as LSR), and when.
    sent: Vec<(u32, u32, Instant)>,
    /// The worst loss (percent, weighted by kind already), jitter (ms) and round trip (ms).
    loss_effect: f64,
    jitter_ms: f64,
    rtt_ms: Option<f64>,
    reported: bool,
}

impl PeerReports {
    /// The node sent a sender report on this stream.
    pub fn on_sender_report(&mut self, ssrc: u32, ntp: u64, now: Instant) {
        let lsr = (ntp >> 16) as u32;
        match self.sent.iter_mut().find(|(s, _, _)| *s == ssrc) {
            Some(e) => *e = (ssrc, lsr, now),
            None => {
                // Streams come and go on a long session: the oldest report is forgotten.
                if self.sent.len() >= MAX_STREAMS {
                    self.sent.remove(0);
                }
                self.sent.push((ssrc, lsr, now));
            }
        }
    }

    /// A reception report for a stream of `kind` the node sends.
    pub fn on_report(
        &mut self,
        now: Instant,
        kind: MediaKind,
        r: &rtc::rtcp::reception_report::ReceptionReport,
    ) {
        self.reported = true;
        let loss = f64::from(r.fraction_lost) * 100.0 / 256.0;
        self.loss_effect = self.loss_effect.max(loss * loss_weight(kind));
        let clock = match kind {
            MediaKind::Audio => 48.0,
            MediaKind::Video => 90.0,
        };
        self.jitter_ms = self.jitter_ms.max(f64::from(r.jitter) / clock);
        if r.last_sender_report != 0
            && let Some((_, _, at)) = self
                .sent
                .iter()
                .find(|(s, lsr, _)| *s == r.ssrc && *lsr == r.last_sender_report)
        {
            let held = Duration::from_secs_f64(f64::from(r.delay) / 65536.0);
            let rtt = now.saturating_duration_since(*at).saturating_sub(held);
            let ms = rtt.as_secs_f64() * 1000.0;
            self.rtt_ms = Some(self.rtt_ms.map_or(ms, |m: f64| m.max(ms)));
        }
    }

    /// The window's packet score, if anything was reported; starts the next window.
    fn take_score(&mut self) -> (Option<f64>, Option<f64>) {
        let rtt = self.rtt_ms.take();
        let score = self
            .reported
            .then(|| packet_score(self.loss_effect, rtt.unwrap_or(0.0), self.jitter_ms));
        self.reported = false;
        self.loss_effect = 0.0;
        self.jitter_ms = 0.0;
        (score, rtt)
    }
}

/// A participant's smoothed score (0 to 100), the quality the room was last told, and the
/// quality (and score) in its registry record and when that was written.
#[derive(Debug, Clone, Copy)]
pub struct Score {
    value: f64,
    told: Option<&'static str>,
    written: Option<(&'static str, f32)>,
    written_at: Option<Instant>,
}

impl Default for Score {
    fn default() -> Self {
        Score::of(100.0)
    }
}

impl Score {
    fn of(value: f64) -> Self {
        Score {
            value,
            told: None,
            written: None,
            written_at: None,
        }
    }

    /// What the participant's registry record says of its quality.
    pub fn record(self) -> Option<sfu_control::QualityRecord> {
        self.written
            .map(|(quality, score)| sfu_control::QualityRecord {
                quality: quality.to_owned(),
                score,
            })
    }

    /// Whether the registry record should be rewritten now (the quality changed since it was
    /// written, and not too recently); if so, takes the current quality as written.
    fn take_write(&mut self, now: Instant) -> bool {
        let quality = self.quality();
        if self.written.is_some_and(|(q, _)| q == quality)
            || self.written_at.is_some_and(|t| now < t + WRITE_PERIOD)
        {
            return false;
        }
        self.written = Some((quality, self.mos()));
        self.written_at = Some(now);
        true
    }

    fn update(&mut self, raw: f64) {
        let factor = if raw < self.value { 0.8 } else { 0.4 };
        self.value = factor * raw + (1.0 - factor) * self.value;
    }

    /// LiveKit's quality for the score.
    pub fn quality(self) -> &'static str {
        match self.value {
            s if s > 80.0 => "excellent",
            s if s > 40.0 => "good",
            s if s > 20.0 => "poor",
            _ => "lost",
        }
    }

    /// The score as a mean opinion score (1 to 4.5), as LiveKit reports it.
    pub fn mos(self) -> f32 {
        let s = self.value.clamp(0.0, 100.0);
        (1.0 + 0.035 * s + 0.000007 * s * (s - 60.0) * (100.0 - s)) as f32
    }
}

fn loss_weight(kind: MediaKind) -> f64 {
    match kind {
        MediaKind::Audio => 8.0,
        MediaKind::Video => 2.0,
    }
}

/// A quality's name as the protocol spells it (one of LiveKit's four; anything else is `lost`).
pub fn quality_name(q: &str) -> &'static str {
    match q {
        "excellent" => "excellent",
        "good" => "good",
        "poor" => "poor",
        _ => "lost",
    }
}

/// LiveKit's packet score: 100 less the delay's and the (weighted) loss's effects.
fn packet_score(loss_effect: f64, rtt_ms: f64, jitter_ms: f64) -> f64 {
    let delay = rtt_ms / 2.0 + jitter_ms * 2.0;
    let delay_effect = if delay > 160.0 {
        (delay - 120.0) / 10.0
    } else {
        delay / 40.0
    };
    (100.0 - delay_effect - loss_effect).max(0.0)
}

impl LocalRoom {
    /// Every [`PERIOD`]: scores each participant here, then tells everyone the qualities of
    /// the announced ones (one message, encoded once) and each unannounced one its own.
    pub(super) fn tell_quality(&mut self, now: Instant, out: &mut crate::media::egress::Egress) {
        if now < self.next_quality {
            return;
        }
        self.next_quality = now + PERIOD;
        let sids: Vec<String> = self.roster.local.keys().cloned().collect();
        for sid in sids {
            let Some(p) = self.roster.local.get(&sid) else {
                continue;
            };
            let (publisher, subscriber) = (p.publisher, p.subscriber);
            let (mut worst, mut rtt) = (None::<f64>, None);
            if let Some(peer) = subscriber.and_then(|k| self.peers.get_mut(k)) {
                let (score, r) = peer.quality.take_score();
                worst = score;
                rtt = r;
            }
            if let Some(peer) = publisher.and_then(|k| self.peers.get_mut(k)) {
                for inbound in peer.inbound.values_mut() {
                    let kind = self
                        .publications
                        .get(&inbound.track)
                        .map(|t| (t.kind, t.muted));
                    for rx in &mut inbound.rx {
                        let (expected, lost) = rx.take_window();
                        if expected == 0 || kind.is_none_or(|(_, muted)| muted) {
                            continue;
                        }
                        let weight = kind.map_or(2.0, |(k, _)| loss_weight(k));
                        let loss = lost as f64 * 100.0 / expected as f64 * weight;
                        let s = packet_score(loss, rtt.unwrap_or(0.0), 0.0);
                        worst = Some(worst.map_or(s, |w| w.min(s)));
                    }
                }
            }
            if let (Some(raw), Some(p)) = (worst, self.roster.local.get_mut(&sid)) {
                p.quality.update(raw);
            }
        }
        // Told only when something changed (a quality, or someone not told yet), so that a
        // steady room, or a large room's audience, costs no messages.
        let view = |p: &crate::media::room::Participant| QualityView {
            participant: p.sid.clone(),
            quality: p.quality.quality(),
            score: p.quality.mos(),
        };
        let mut changed = false;
        let mut write = Vec::new();
        for p in self.roster.local.values_mut() {
            if p.announced && p.quality.take_write(now) {
                write.push(p.sid.clone());
            }
            let now_told = Some(p.quality.quality());
            if p.quality.told != now_told {
                p.quality.told = now_told;
                if p.announced {
                    changed = true;
                } else {
                    p.send(ServerMessage::ConnectionQuality {
                        updates: vec![view(p)],
                    });
                }
            }
        }
        for sid in write {
            if let Some(p) = self.roster.local.get(&sid) {
                out.effects
                    .push(crate::media::egress::Effect::ParticipantUpdated {
                        room: self.name.clone(),
                        record: self.participant_record(p),
                    });
            }
        }
        // Remote changes are coalesced into this period's message: told at once, every
        // change of every participant on every other node would reach every client, a large
        // room's audience too.
        if changed || std::mem::take(&mut self.remote_quality_changed) {
            let remote = self.roster.remote.iter().filter_map(|(sid, r)| {
                r.quality.as_ref().map(|q| QualityView {
                    participant: sid.clone(),
                    quality: quality_name(&q.quality),
                    score: q.score,
                })
            });
            let announced: Vec<QualityView> = self
                .roster
                .local
                .values()
                .filter(|p| p.announced)
                .map(view)
                .chain(remote)
                .take(MAX_TOLD)
                .collect();
            self.broadcast("", &ServerMessage::ConnectionQuality { updates: announced });
        }
    }

    /// A participant of another worker or node has a new quality in its record: the room
    /// tells it with the next period's qualities.
    pub(super) fn on_remote_quality(&mut self) {
        self.remote_quality_changed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::egress::{Effect, Egress};

    #[test]
    fn loss_is_counted_from_sequence_numbers_across_wraps_and_reordering() {
        let mut rx = RxLoss::default();
        for seq in (65_500u16..=65_535).chain(0..100) {
            if seq % 10 != 3 {
                rx.on_packet(seq);
            }
        }
        rx.on_packet(13); // late, after a wrap
        let (expected, lost) = rx.take_window();
        assert_eq!(expected, 136);
        assert_eq!(lost, 13, "14 of 136 missing, one came late");
        assert_eq!(rx.take_window(), (0, 0), "a new window");
        rx.on_packet(100);
        assert_eq!(rx.take_window(), (1, 0));
    }

    #[test]
    fn scores_map_to_livekits_qualities() {
        // Loopback: nothing lost, a millisecond of round trip.
        assert_eq!(
            Score::of(packet_score(0.0, 1.0, 1.0)).quality(),
            "excellent"
        );
        // 2.5% audio loss is GOOD's edge, 7.5% POOR's.
        assert_eq!(
            Score::of(packet_score(5.0 * 8.0, 0.0, 0.0)).quality(),
            "good"
        );
        assert_eq!(
            Score::of(packet_score(10.0 * 8.0, 0.0, 0.0)).quality(),
            "lost"
        );
        // 300 ms of round trip alone (150 ms of delay) costs 3.75 points; above 160 ms of
        // delay each 10 ms costs one.
        assert!((packet_score(0.0, 300.0, 0.0) - 96.25).abs() < 1e-9);
        assert!((packet_score(0.0, 400.0, 0.0) - 92.0).abs() < 1e-9);
        let mut s = Score::default();
        s.update(0.0);
        assert!((s.value - 20.0).abs() < 1e-9, "falls fast");
        s.update(100.0);
        assert!((s.value - 52.0).abs() < 1e-9, "rises slowly");
        assert!((Score::default().mos() - 4.5).abs() < 1e-6);
    }

    #[test]
    fn qualities_are_told_when_they_change_or_someone_was_not_told_yet() {
        use crate::media::room::metadata::tests::{join, messages, room};
        let t0 = Instant::now();
        let mut r = room(t0);
        let (alice, mut alice_rx) = join(&mut r, t0, "alice", false, "");
        let (_bob, mut bob_rx) = join(&mut r, t0, "bob", false, "");
        messages(&mut alice_rx, "");
        let mut out = Egress::default();
        r.tell_quality(t0 + PERIOD, &mut out);
        let written: Vec<_> = out
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::ParticipantUpdated { record, .. } => record.quality.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(written.len(), 2, "both records carry their first quality");
        assert_eq!(written[0].quality, "excellent");
        let told = messages(&mut alice_rx, "connection_quality");
        assert_eq!(told.len(), 1, "{told:?}");
        let updates = told[0]["updates"].as_array().unwrap();
        assert_eq!(updates.len(), 2, "both, to each");
        assert!(updates.iter().any(|u| u["participant"] == alice.as_str()));
        assert_eq!(
            updates[0]["quality"], "excellent",
            "nothing against them yet"
        );
        assert_eq!(messages(&mut bob_rx, "connection_quality").len(), 1);
        let mut out = Egress::default();
        r.tell_quality(t0 + PERIOD * 2, &mut out);
        assert!(
            messages(&mut alice_rx, "connection_quality").is_empty(),
            "nothing changed: nothing told"
        );
        assert!(out.effects.is_empty(), "nor written");
        let (_carol, _carol_rx) = join(&mut r, t0, "carol", false, "");
        r.tell_quality(t0 + PERIOD * 3, &mut Egress::default());
        let told = messages(&mut alice_rx, "connection_quality");
        assert_eq!(
            told[0]["updates"].as_array().unwrap().len(),
            3,
            "carol is new"
        );
        // A participant of another node: its record's quality is told with the next period's,
        // and when it changes; not again while it does not.
        let mut record = sfu_control::ParticipantRecord {
            sid: "PA_far".into(),
            identity: "far".into(),
            name: "Far".into(),
            node: "n2".into(),
            kind: "client".into(),
            joined_ms: 1,
            stage: true,
            worker: 0,
            metadata: String::new(),
            attributes: Default::default(),
            quality: Some(sfu_control::QualityRecord {
                quality: "good".into(),
                score: 3.9,
            }),
        };
        let far = |told: &[serde_json::Value]| {
            told.iter()
                .flat_map(|m| m["updates"].as_array().unwrap().clone())
                .filter(|u| u["participant"] == "PA_far")
                .map(|u| u["quality"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        r.on_remote_participant(t0, record.clone(), &mut Egress::default());
        r.tell_quality(t0 + PERIOD * 4, &mut Egress::default());
        let told = messages(&mut alice_rx, "connection_quality");
        assert_eq!(far(&told), ["good"], "{told:?}");
        r.on_remote_participant(t0, record.clone(), &mut Egress::default());
        r.tell_quality(t0 + PERIOD * 5, &mut Egress::default());
        assert!(messages(&mut alice_rx, "connection_quality").is_empty());
        record.quality.as_mut().unwrap().quality = "poor".into();
        // Several changes within one period make one message.
        r.on_remote_participant(t0, record.clone(), &mut Egress::default());
        record.quality.as_mut().unwrap().score = 2.1;
        r.on_remote_participant(t0, record, &mut Egress::default());
        r.tell_quality(t0 + PERIOD * 6, &mut Egress::default());
        let told = messages(&mut alice_rx, "connection_quality");
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(far(&told), ["poor"], "{told:?}");
    }

    #[test]
    fn receiver_reports_give_loss_jitter_and_round_trip() {
        use rtc::rtcp::reception_report::ReceptionReport;
        let t0 = Instant::now();
        let mut r = PeerReports::default();
        assert_eq!(r.take_score(), (None, None), "nothing reported");
        let ntp: u64 = 0x1234_5678_9abc_def0;
        r.on_sender_report(7, ntp, t0);
        let report = ReceptionReport {
            ssrc: 7,
            fraction_lost: 0,
            jitter: 90 * 4,
            last_sender_report: (ntp >> 16) as u32,
            // Held half a second by the receiver.
            delay: 65536 / 2,
            ..Default::default()
        };
        r.on_report(t0 + Duration::from_millis(540), MediaKind::Video, &report);
        let (score, rtt) = r.take_score();
        let rtt = rtt.unwrap();
        assert!((rtt - 40.0).abs() < 1.0, "{rtt}");
        // delay 20 + 8 ms: effect 0.7.
        assert!((score.unwrap() - 99.3).abs() < 0.1, "{score:?}");
    }
}
