//! The receiver's side of transport-wide congestion control: building the feedback packet that
//! reports which transport-wide sequence numbers arrived, and when.
//!
//! The SFU itself never sends this (webrtc-rs's interceptor does, towards publishers); it is
//! what simulated subscribers use in the congestion tests and benchmarks, so that the
//! [`Estimator`](crate::bandwidth::Estimator) is exercised with the very packet type browsers
//! send.

use rtcp::transport_feedbacks::transport_layer_cc::{
    PacketStatusChunk, RecvDelta, StatusChunkTypeTcc, StatusVectorChunk, SymbolSizeTypeTcc,
    SymbolTypeTcc, TransportLayerCc,
};
use std::time::Duration;

/// The reference time of TWCC feedback counts in 64 ms units.
const REFERENCE_TICK_US: u64 = 64_000;
/// Receive deltas up to this fit the one-byte ("small") form: 255 × 250 µs.
const SMALL_DELTA_MAX_US: i64 = 63_750;

/// Feedback for the packets numbered `base`, `base + 1`, …: `arrivals[i]` is when packet
/// `base + i` arrived on the receiver's clock, or `None` if it did not. `count` is the
/// feedback packet counter.
pub fn twcc_feedback(base: u16, arrivals: &[Option<Duration>], count: u8) -> TransportLayerCc {
    let first = arrivals
        .iter()
        .flatten()
        .next()
        .copied()
        .unwrap_or_default();
    let reference = first.as_micros() as u64 / REFERENCE_TICK_US;
    let mut last = (reference * REFERENCE_TICK_US) as i64;
    let mut chunks = Vec::new();
    let mut deltas = Vec::new();
    for group in arrivals.chunks(7) {
        let mut symbols = Vec::with_capacity(group.len());
        for a in group {
            match a {
                Some(at) => {
                    let us = at.as_micros() as i64;
                    // On the wire deltas count 250 µs; keep the values representable.
                    let delta = (us - last) / 250 * 250;
                    last += delta;
                    let symbol = if (0..=SMALL_DELTA_MAX_US).contains(&delta) {
                        SymbolTypeTcc::PacketReceivedSmallDelta
                    } else {
                        SymbolTypeTcc::PacketReceivedLargeDelta
                    };
                    symbols.push(symbol);
                    deltas.push(RecvDelta {
                        type_tcc_packet: symbol,
                        delta,
                    });
                }
                None => symbols.push(SymbolTypeTcc::PacketNotReceived),
            }
        }
        chunks.push(PacketStatusChunk::StatusVectorChunk(StatusVectorChunk {
            type_tcc: StatusChunkTypeTcc::StatusVectorChunk,
            symbol_size: SymbolSizeTypeTcc::TwoBit,
            symbol_list: symbols,
        }));
    }
    TransportLayerCc {
        sender_ssrc: 1,
        media_ssrc: 0,
        base_sequence_number: base,
        packet_status_count: arrivals.len() as u16,
        reference_time: reference as u32,
        fb_pkt_count: count,
        packet_chunks: chunks,
        recv_deltas: deltas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc_interceptor::convert_twcc;

    #[test]
    fn feedback_round_trips_through_the_parser() {
        let arrivals = [
            Some(Duration::from_millis(1_000)),
            None,
            Some(Duration::from_millis(1_010)),
            Some(Duration::from_millis(1_200)),
            Some(Duration::from_millis(1_190)),
        ];
        let acks = convert_twcc(&twcc_feedback(65_534, &arrivals, 0));
        assert_eq!(acks.len(), 5);
        assert_eq!(acks[0].sequence_number, 65_534);
        assert_eq!(acks[2].sequence_number, 0, "wraps");
        assert!(!acks[1].arrived);
        let ms: Vec<Option<u128>> = acks
            .iter()
            .map(|a| a.arrival.map(|d| d.as_millis()))
            .collect();
        assert_eq!(
            ms,
            vec![Some(1_000), None, Some(1_010), Some(1_200), Some(1_190)]
        );
    }
}
