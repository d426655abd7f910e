//! A media worker's metrics: its rooms' counters added to the node's, about once a second.

use super::WorkerCore;
use crate::media::room::drive::EdgeDrops;
use crate::metrics::Metrics;
use sfu_core::{DropReason, RoomStats};

impl WorkerCore {
    pub(in crate::media) fn report_metrics(&mut self) {
        let udp = self.transmits().take_sent();
        let m = &self.metrics;
        let now = self.snapshot();
        // Joins go to the worker with the fewest participants.
        self.shared.load[self.index].store(now.participants, std::sync::atomic::Ordering::Relaxed);
        let delta = |gauge: &prometheus_client::metrics::gauge::Gauge, new: usize, old: usize| {
            gauge.inc_by(new as i64 - old as i64);
        };
        delta(&m.rooms, now.rooms, self.reported_gauges.rooms);
        delta(
            &m.participants,
            now.participants,
            self.reported_gauges.participants,
        );
        delta(&m.tracks, now.tracks, self.reported_gauges.tracks);
        delta(&m.peer_connections, now.peers, self.reported_gauges.peers);
        self.reported_gauges = now;
        for (_, room) in &mut self.rooms {
            add_room_stats(m, room.core_stats(), &room.reported);
            room.reported = room.core_stats().clone();
            add_edge_drops(m, &room.drops, &room.reported_drops);
            room.reported_drops = room.drops;
        }
        let d = std::mem::take(&mut self.drops);
        m.count_drop("unknown_source", d.unknown_source);
        m.count_drop("unknown_ufrag", d.unknown_ufrag);
        m.count_drop("socket_send_failed", d.send_failed);
        m.count_drop("relay_rejected", d.relay_rejected);
        m.count_drop(
            "relay_unknown_flow",
            self.shared
                .unknown_flow_records
                .swap(0, std::sync::atomic::Ordering::Relaxed),
        );
        let d = std::mem::take(&mut self.direct_drops);
        m.count_drop("direct_unknown_channel", d.unknown_channel);
        m.count_drop("direct_rejected", d.rejected);
        let sent = std::mem::take(&mut self.relay_sent);
        let path = |path| {
            m.relay_datagrams_out
                .get_or_create(&crate::metrics::PathLabels { path })
        };
        if sent.direct > 0 {
            path("direct").inc_by(sent.direct);
        }
        if sent.quic > 0 {
            path("quic").inc_by(sent.quic);
        }
        m.udp_datagrams_out.inc_by(udp.datagrams);
        m.udp_messages_out.inc_by(udp.messages);
    }
}

pub(in crate::media) fn add_room_stats(m: &Metrics, now: &RoomStats, before: &RoomStats) {
    m.packets_in.inc_by(now.packets_in - before.packets_in);
    m.bytes_in.inc_by(now.bytes_in - before.bytes_in);
    m.packets_out.inc_by(now.packets_out - before.packets_out);
    m.bytes_out.inc_by(now.bytes_out - before.bytes_out);
    m.relayed.inc_by(now.relayed - before.relayed);
    m.nacks_received
        .inc_by(now.nacks_received - before.nacks_received);
    m.retransmitted
        .inc_by(now.retransmitted - before.retransmitted);
    m.keyframe_requests_received
        .inc_by(now.keyframe_requests_received - before.keyframe_requests_received);
    m.keyframe_requests_sent
        .inc_by(now.keyframe_requests_sent - before.keyframe_requests_sent);
    m.probe_packets
        .inc_by(now.probe_packets - before.probe_packets);
    m.layer_switches
        .inc_by(now.layer_switches - before.layer_switches);
    m.congestion_feedback
        .inc_by(now.congestion_feedback - before.congestion_feedback);
    m.red_packets.inc_by(now.red_packets - before.red_packets);
    m.count_drop(
        "malformed_payload",
        now.dropped_malformed - before.dropped_malformed,
    );
    for (i, reason) in DropReason::ALL.iter().enumerate() {
        m.count_drop(reason.as_str(), now.dropped[i] - before.dropped[i]);
    }
    m.count_drop(
        "unknown_track",
        now.dropped_unknown - before.dropped_unknown,
    );
    m.count_drop("nack_miss", now.nack_misses - before.nack_misses);
    m.count_drop("nack_repeat", now.nack_repeats - before.nack_repeats);
    m.count_drop(
        "nack_over_budget",
        now.nack_over_budget - before.nack_over_budget,
    );
}

pub(in crate::media) fn add_edge_drops(m: &Metrics, now: &EdgeDrops, before: &EdgeDrops) {
    m.count_drop("rejected_by_peer", now.rejected - before.rejected);
    m.count_drop("unknown_track", now.unknown_track - before.unknown_track);
    m.count_drop("send_failed", now.send_failed - before.send_failed);
    m.count_drop("data_refused", now.data_refused - before.data_refused);
}
