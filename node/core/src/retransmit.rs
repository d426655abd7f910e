//! The per-layer retransmission cache that answers NACKs.
//!
//! Every packet a track receives is kept, shared (`Bytes` payload, no copy), in a ring indexed
//! by its sequence number. A NACK from any subscriber is answered from here instead of being
//! passed to the publisher, so loss on one downstream path costs the publisher nothing.

use crate::seq::extend;
use rtp::packet::Packet;
use std::time::{Duration, Instant};

/// Packets older than this are not resent: the receiver's jitter buffer has given up on them.
pub const MAX_RETRANSMIT_AGE: Duration = Duration::from_secs(2);
/// Packets a layer's cache holds unless the room is configured otherwise.
pub const DEFAULT_CACHE_SIZE: usize = 512;

struct Slot {
    ext_seq: u64,
    packet: Packet,
    arrival: Instant,
    keyframe: bool,
}

/// Ring buffer of recently received packets of one RTP stream.
pub struct RetransmissionCache {
    slots: Box<[Option<Slot>]>,
    mask: u64,
    highest: Option<u64>,
}

/// A packet found in the cache.
pub struct Cached<'a> {
    pub packet: &'a Packet,
    pub keyframe: bool,
}

impl RetransmissionCache {
    /// A cache holding the last `capacity` packets (rounded up to a power of two).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        Self {
            slots: (0..capacity).map(|_| None).collect(),
            mask: capacity as u64 - 1,
            highest: None,
        }
    }

    /// Stores a packet under its extended sequence number.
    pub fn insert(&mut self, ext_seq: u64, packet: Packet, arrival: Instant, keyframe: bool) {
        if self.highest.is_none_or(|h| ext_seq > h) {
            self.highest = Some(ext_seq);
        }
        let idx = (ext_seq & self.mask) as usize;
        self.slots[idx] = Some(Slot {
            ext_seq,
            packet,
            arrival,
            keyframe,
        });
    }

    /// The packet with 16-bit sequence number `seq`, if still cached and not too old at `now`.
    pub fn get(&self, seq: u16, now: Instant) -> Option<Cached<'_>> {
        let ext = extend(self.highest?, seq);
        let slot = self.slots[(ext & self.mask) as usize].as_ref()?;
        if slot.ext_seq != ext || now.saturating_duration_since(slot.arrival) > MAX_RETRANSMIT_AGE {
            return None;
        }
        Some(Cached {
            packet: &slot.packet,
            keyframe: slot.keyframe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(seq: u16) -> Packet {
        let mut p = Packet {
            payload: Bytes::from_static(b"payload"),
            ..Default::default()
        };
        p.header.sequence_number = seq;
        p
    }

    #[test]
    fn returns_cached_packets_and_forgets_overwritten_ones() {
        let now = Instant::now();
        let mut cache = RetransmissionCache::new(4);
        for seq in 100u16..106 {
            cache.insert(seq as u64 + 65_536, packet(seq), now, false);
        }
        assert!(cache.get(105, now).is_some());
        assert_eq!(
            cache.get(102, now).unwrap().packet.header.sequence_number,
            102
        );
        // 100 and 101 were overwritten by 104 and 105.
        assert!(cache.get(101, now).is_none());
        assert!(cache.get(100, now).is_none());
        // Never seen.
        assert!(cache.get(200, now).is_none());
    }

    #[test]
    fn old_packets_are_not_resent() {
        let now = Instant::now();
        let mut cache = RetransmissionCache::new(8);
        cache.insert(70_000, packet(4_464), now, true);
        assert!(cache.get(4_464, now + Duration::from_secs(1)).is_some());
        assert!(cache.get(4_464, now + Duration::from_secs(3)).is_none());
    }
}
