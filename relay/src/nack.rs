//! Loss detection on a relayed flow, and the NACKs that repair it from the sender's cache.
//!
//! Sans-IO like the rest of the core: packets and time go in, the sequence numbers to ask for
//! come out. A hole is reported after a short reordering delay and asked for again a few times
//! before the receiver gives up on it.

use sfu_core::seq::Unwrapper;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Tunables.
#[derive(Clone, Copy, Debug)]
pub struct NackConfig {
    /// Wait this long for a late (reordered) packet before asking for it.
    pub reorder_delay: Duration,
    /// Ask again after this long without the packet.
    pub retry_interval: Duration,
    pub max_tries: u8,
    /// Forget holes older than this: the receivers downstream have moved on.
    pub max_age: Duration,
    /// A jump of more sequence numbers than this is a restart of the stream, not loss.
    pub max_gap: u64,
}

impl Default for NackConfig {
    fn default() -> Self {
        Self {
            reorder_delay: Duration::from_millis(5),
            retry_interval: Duration::from_millis(40),
            max_tries: 5,
            max_age: Duration::from_secs(1),
            max_gap: 500,
        }
    }
}

struct Hole {
    seen: Instant,
    last_asked: Option<Instant>,
    tries: u8,
}

/// Tracks holes in one flow's sequence numbers.
pub struct NackGenerator {
    config: NackConfig,
    unwrapper: Unwrapper,
    holes: BTreeMap<u64, Hole>,
}

impl NackGenerator {
    pub fn new(config: NackConfig) -> Self {
        Self {
            config,
            unwrapper: Unwrapper::default(),
            holes: BTreeMap::new(),
        }
    }

    /// A packet arrived.
    pub fn on_packet(&mut self, now: Instant, seq: u16) {
        let before = self.unwrapper.highest();
        let (ext, newest) = self.unwrapper.unwrap(seq);
        if !newest {
            self.holes.remove(&ext);
            return;
        }
        let Some(prev) = before else { return };
        let gap = ext - prev - 1;
        if gap > self.config.max_gap {
            self.holes.clear();
            return;
        }
        for missing in prev + 1..ext {
            self.holes.insert(
                missing,
                Hole {
                    seen: now,
                    last_asked: None,
                    tries: 0,
                },
            );
        }
    }

    /// Sequence numbers to ask for now.
    pub fn poll(&mut self, now: Instant) -> Vec<u16> {
        let c = self.config;
        self.holes.retain(|_, h| {
            h.tries < c.max_tries && now.saturating_duration_since(h.seen) < c.max_age
        });
        let mut ask = Vec::new();
        for (&ext, h) in &mut self.holes {
            let due = match h.last_asked {
                None => now.saturating_duration_since(h.seen) >= c.reorder_delay,
                Some(t) => now.saturating_duration_since(t) >= c.retry_interval,
            };
            if due {
                h.last_asked = Some(now);
                h.tries += 1;
                ask.push(ext as u16);
            }
        }
        ask
    }

    /// When [`poll`](Self::poll) may have something to say.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.holes
            .values()
            .map(|h| match h.last_asked {
                None => h.seen + self.config.reorder_delay,
                Some(t) => t + self.config.retry_interval,
            })
            .min()
    }

    /// Holes currently tracked.
    pub fn outstanding(&self) -> usize {
        self.holes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_after_the_reorder_delay_then_retries_then_gives_up() {
        let t = Instant::now();
        let mut n = NackGenerator::new(NackConfig::default());
        n.on_packet(t, 10);
        n.on_packet(t, 13);
        assert!(n.poll(t).is_empty(), "reordering gets a chance");
        let ms = Duration::from_millis;
        assert_eq!(n.poll(t + ms(5)), vec![11, 12]);
        n.on_packet(t + ms(6), 11);
        assert!(n.poll(t + ms(10)).is_empty());
        assert_eq!(n.poll(t + ms(45)), vec![12]);
        for i in 0..3 {
            assert_eq!(n.poll(t + ms(90 + 45 * i)), vec![12]);
        }
        assert!(
            n.poll(t + ms(500)).is_empty(),
            "five tries, then it gives up"
        );
        assert_eq!(n.outstanding(), 0);
    }

    #[test]
    fn late_packets_fill_holes_and_big_jumps_are_restarts() {
        let t = Instant::now();
        let mut n = NackGenerator::new(NackConfig::default());
        n.on_packet(t, 65_534);
        n.on_packet(t, 1);
        assert_eq!(n.outstanding(), 2, "65535 and 0 across the wrap");
        n.on_packet(t, 0);
        n.on_packet(t, 65_535);
        assert_eq!(n.outstanding(), 0);
        n.on_packet(t, 30_000);
        assert_eq!(n.outstanding(), 0, "a jump is not a burst of loss");
        assert_eq!(n.poll_timeout(), None);
    }
}
