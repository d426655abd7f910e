//! A [`Room`]'s housekeeping, every tick: keyframe requests held back or retried, the active
//! speakers, each subscriber's bandwidth allocation and probes, dynacast, and sender reports.

use crate::allocator::{Demand, allocate};
use crate::codec::MediaKind;
use crate::ids::{LayerIndex, SinkId, TrackId};
use crate::room::{Output, Room};
use crate::room_media::{PROBE_STEP, judge_probes};
use crate::track::TrackSource;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

/// Priorities of video when bandwidth is short (audio always goes first).
const PRIORITY_SCREEN: u8 = 3;
const PRIORITY_FOCUS: u8 = 2;
const PRIORITY_OTHER: u8 = 1;
/// Share of a subscriber's estimate the allocator fills: video is bursty (a keyframe is
/// several frames' worth of bytes), and a path run at its estimate queues at every one.
const UTILIZATION: f64 = 0.9;

impl Room {
    /// Housekeeping: see the module documentation.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_probe_step.is_some_and(|t| now >= t) {
            self.step_probes(now);
        }
        let Some(due) = self.next_tick else { return };
        if now < due {
            return;
        }
        self.next_tick = (!self.tracks.is_empty()).then(|| now + self.config.tick);
        for (&track_id, track) in &mut self.tracks {
            for (layer, l) in track.layers.iter_mut().enumerate() {
                if l.keyframes.poll(now) {
                    self.stats.keyframe_requests_sent += 1;
                    self.outputs.push_back(Output::KeyframeRequest {
                        track: track_id,
                        layer,
                    });
                }
            }
        }
        self.speakers.handle_timeout(now);
        if let Some(s) = self.speakers.poll_changed() {
            self.outputs.push_back(Output::Speakers(s));
        }
        if let Some(levels) = self.speakers.poll_shared_levels(now) {
            self.outputs.push_back(Output::SharedLevels(levels));
        }
        for d in self.downlinks.values_mut() {
            d.estimator.handle_timeout(now);
            judge_probes(d, now);
        }
        if self.next_allocation.is_none_or(|t| now >= t) {
            self.allocate(now, None);
        }
        self.dynacast(now);
        self.report_and_retry(now);
    }

    /// Chooses the layer of every subscription (of one subscriber's with `only`): each
    /// subscriber's estimate shared among its subscriptions by the stream allocator, after the
    /// audio top-K and the video last-N.
    pub(crate) fn allocate(&mut self, now: Instant, only: Option<SinkId>) {
        if only.is_none() {
            self.next_allocation = Some(now + self.config.allocation_period);
        }
        let costs: HashMap<TrackId, Vec<u64>> = self
            .tracks
            .iter_mut()
            .map(|(id, t)| (*id, t.layer_bitrates(now)))
            .collect();
        let seen = self.seen_participants();
        let speaking: HashSet<Arc<str>> = self
            .tracks
            .values()
            .filter(|t| t.info.kind == MediaKind::Audio && self.speakers.is_active(t.info.id))
            .map(|t| t.info.participant.clone())
            .collect();
        let mut by_sink: HashMap<SinkId, Vec<(TrackId, usize)>> = HashMap::new();
        for (id, t) in &self.tracks {
            for (i, s) in t.subscriptions.iter().enumerate() {
                if only.is_none_or(|o| o == s.sink) {
                    by_sink.entry(s.sink).or_default().push((*id, i));
                }
            }
        }
        let top_k = self.config.speakers.top_k;
        let mut keyframes: Vec<(TrackId, LayerIndex)> = Vec::new();
        for (sink, subs) in by_sink {
            let estimate = self.downlinks.get(&sink).and_then(|d| d.budget(now));
            let budget = estimate.map(|e| (e as f64 * UTILIZATION) as u64);
            // Audio top-K among this subscriber's audio: best-ranked first, unranked always.
            let mut ranked: Vec<(usize, TrackId)> = subs
                .iter()
                .filter(|(t, _)| self.tracks[t].info.kind == MediaKind::Audio)
                .filter_map(|(t, _)| Some((self.speakers.rank(*t)?, *t)))
                .collect();
            ranked.sort();
            let muted_by_top_k: HashSet<TrackId> = if top_k == 0 {
                HashSet::new()
            } else {
                ranked.iter().skip(top_k).map(|(_, t)| *t).collect()
            };
            let demands: Vec<Demand<'_>> = subs
                .iter()
                .map(|(t, i)| {
                    let track = &self.tracks[t];
                    let sub = &track.subscriptions[*i];
                    let info = &track.info;
                    let wanted = sub.enabled
                        && match info.kind {
                            MediaKind::Audio => !muted_by_top_k.contains(t),
                            MediaKind::Video => {
                                sub.pinned
                                    || info.source == TrackSource::ScreenShare
                                    || seen.as_ref().is_none_or(|s| s.contains(&info.participant))
                            }
                        };
                    let focus = sub.pinned || speaking.contains(&info.participant);
                    Demand {
                        kind: info.kind,
                        priority: match (info.source, focus) {
                            (TrackSource::ScreenShare, _) => PRIORITY_SCREEN,
                            (_, true) => PRIORITY_FOCUS,
                            _ => PRIORITY_OTHER,
                        },
                        max_layer: wanted.then_some(sub.max_layer),
                        layer_bps: &costs[t],
                        current: sub.desired,
                    }
                })
                .collect();
            let allocation = allocate(budget, &demands);
            // Starved: some video that is wanted gets no layer at all.
            let starved = budget.is_some()
                && demands.iter().zip(&allocation.layers).any(|(d, l)| {
                    d.kind == MediaKind::Video && d.max_layer.is_some() && l.is_none()
                });
            drop(demands);
            for ((t, i), layer) in subs.iter().zip(&allocation.layers) {
                let Some(track) = self.tracks.get_mut(t) else {
                    continue;
                };
                let target = layer.map(|l| track.select_layer(now, l));
                let kind = track.info.kind;
                let sub = &mut track.subscriptions[*i];
                if kind == MediaKind::Video && sub.desired != *layer {
                    self.stats.layer_switches += 1;
                }
                sub.desired = *layer;
                if sub.forwarder.target_layer() != target
                    && sub.forwarder.set_target_layer(target)
                    && let Some(l) = target
                    && kind == MediaKind::Video
                {
                    keyframes.push((*t, l));
                }
            }
            let carrier = self.probe_carrier(sink).is_some();
            if let Some(d) = self.downlinks.get_mut(&sink) {
                let grow = d.starvation.update(now, starved);
                d.estimator.set_starved(grow);
            }
            if let (Some(estimate), Some(d)) = (estimate, self.downlinks.get_mut(&sink))
                && carrier
                && d.can_probe()
                && d.prober
                    .maybe_start(
                        now,
                        estimate as f64,
                        allocation.desired_bps as f64,
                        allocation.allocated_bps >= allocation.desired_bps,
                    )
                    .is_some()
            {
                self.next_probe_step = Some(now + PROBE_STEP);
            }
        }
        keyframes.sort_unstable();
        keyframes.dedup();
        for (t, layer) in keyframes {
            if let Some(track) = self.tracks.get_mut(&t) {
                crate::room_media::request_keyframe(
                    track,
                    layer,
                    now,
                    &mut self.outputs,
                    &mut self.stats,
                );
            }
        }
    }

    /// With last-N, the participants whose video subscribers receive: the N best-ranked
    /// speakers, then publishers that never spoke, in publish order. `None`: everyone.
    fn seen_participants(&self) -> Option<HashSet<Arc<str>>> {
        let n = self.config.speakers.last_n;
        if n == 0 {
            return None;
        }
        let mut order = self.speakers.participants();
        let mut video: Vec<(&Arc<str>, TrackId)> = self
            .tracks
            .values()
            .filter(|t| t.info.kind == MediaKind::Video)
            .map(|t| (&t.info.participant, t.info.id))
            .collect();
        video.sort_by_key(|(_, id)| *id);
        for (p, _) in video {
            if !order.contains(p) {
                order.push(p.clone());
            }
        }
        Some(order.into_iter().take(n).collect())
    }

    /// Dynacast: tells publishers of local simulcast tracks which layers anyone (here or on
    /// other nodes) needs. A layer is turned off only after nobody needed it for
    /// `dynacast_delay`, and turned on at once.
    fn dynacast(&mut self, now: Instant) {
        let delay = self.config.dynacast_delay;
        for (&id, track) in &mut self.tracks {
            let n = track.layers.len();
            if !track.info.local || track.info.kind != MediaKind::Video || n < 2 {
                continue;
            }
            let mut needed = vec![false; n];
            for s in &track.subscriptions {
                if let Some(d) = s.desired {
                    needed[d.min(n - 1)] = true;
                    if let Some(c) = s.forwarder.current_layer() {
                        needed[c.min(n - 1)] = true;
                    }
                }
            }
            for r in &track.relays {
                needed[r.layer.min(n - 1)] = true;
            }
            let mut active = track.publisher_layers.clone();
            for l in 0..n {
                if needed[l] {
                    track.unneeded_since[l] = None;
                    active[l] = true;
                } else {
                    let since = *track.unneeded_since[l].get_or_insert(now);
                    if now.saturating_duration_since(since) >= delay {
                        active[l] = false;
                    }
                }
            }
            if active != track.publisher_layers {
                track.publisher_layers = active.clone();
                self.outputs
                    .push_back(Output::PublisherLayers { track: id, active });
            }
        }
    }

    /// Sender reports, and keyframe requests for subscribers still waiting for one.
    fn report_and_retry(&mut self, now: Instant) {
        for (&track_id, track) in &mut self.tracks {
            let mut waiting: u32 = 0;
            for sub in &mut track.subscriptions {
                if let Some(layer) = sub.forwarder.awaiting_keyframe() {
                    waiting |= layer_bit(layer);
                }
                let report = sub
                    .forwarder
                    .current_layer()
                    .and_then(|l| track.layers[l].report);
                if let Some(report) = sub.poll_report(now, &self.clock, report.as_ref()) {
                    self.outputs.push_back(Output::SenderReport {
                        sink: sub.sink,
                        subscription: sub.id,
                        report,
                    });
                }
            }
            for (layer, l) in track.layers.iter_mut().enumerate() {
                if waiting & layer_bit(layer) != 0
                    && l.keyframes.request_if_idle(now, self.config.keyframe_retry)
                {
                    self.stats.keyframe_requests_sent += 1;
                    self.outputs.push_back(Output::KeyframeRequest {
                        track: track_id,
                        layer,
                    });
                }
            }
        }
    }
}

fn layer_bit(layer: LayerIndex) -> u32 {
    1 << layer.min(31)
}
