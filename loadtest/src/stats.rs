//! Receive-side measurements of one peer: per received stream (by SSRC) packets, loss,
//! latency, jitter and freezes, plus what arrived since the last per-second sample.
//!
//! Memory per peer stays small and bounded (a few KiB at most): latency goes into one sparse
//! logarithmic histogram per peer (not per stream, not a list of samples), so thousands of
//! peers can be measured for as long as a test runs.

use crate::playout::Playout;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Buckets per factor of ten: about 3.7% relative resolution.
const PER_DECADE: usize = 64;
/// From 10 µs to 100 s.
const DECADES: usize = 7;
const MIN_MICROS: f64 = 10.0;

/// The last bucket: everything from 100 s up.
const LAST_BUCKET: u16 = (PER_DECADE * DECADES) as u16;

/// A logarithmic histogram of durations, sparse: only the buckets that were hit, in order.
/// One peer's latencies fall in a few dozen of the 449 buckets, so a peer's histograms take
/// a few hundred bytes where dense ones would take 1.8 KiB each.
#[derive(Clone, Default)]
pub struct Histogram {
    /// (bucket, samples), by bucket.
    buckets: Vec<(u16, u32)>,
    total: u64,
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_secs_f64() * 1e6).max(MIN_MICROS);
        let i = ((us / MIN_MICROS).log10() * PER_DECADE as f64) as usize;
        self.add(i.min(LAST_BUCKET as usize) as u16, 1);
    }

    fn add(&mut self, bucket: u16, n: u32) {
        match self.buckets.binary_search_by_key(&bucket, |b| b.0) {
            Ok(k) => self.buckets[k].1 += n,
            Err(k) => self.buckets.insert(k, (bucket, n)),
        }
        self.total += n as u64;
    }

    /// Empties the histogram, keeping its room for the next samples.
    pub fn clear(&mut self) {
        self.buckets.clear();
        self.total = 0;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for &(bucket, n) in &other.buckets {
            self.add(bucket, n);
        }
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value below which `q` (0..=1) of the samples fall.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let target = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for &(i, n) in &self.buckets {
            seen += n as u64;
            if seen >= target {
                // Upper edge of the bucket.
                let us = MIN_MICROS * 10f64.powf((i + 1) as f64 / PER_DECADE as f64);
                return Some(Duration::from_secs_f64(us / 1e6));
            }
        }
        None
    }
}

/// Measurements of one received RTP stream.
#[derive(Clone, Default)]
pub struct StreamStats {
    highest: Option<u64>,
    first: Option<u64>,
    /// `highest` when the per-second sampler last looked.
    sampled_highest: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    /// Since the stream began (not reset with the window): the first extended sequence number
    /// and the packets received, for RTCP receiver reports.
    base: Option<u64>,
    received: u64,
    /// RFC 3550 interarrival jitter, in seconds.
    jitter: f64,
    last_transit: Option<f64>,
    clock_rate: f64,
    pub first_packet_at: Option<Instant>,
    /// Video only: when each frame could be shown (see [`crate::playout`]); boxed, as most
    /// streams are audio.
    playout: Option<Box<Playout>>,
    pub freezes: u32,
    pub frozen: Duration,
}

/// A gap between video frames that could be shown (complete, and every frame before them
/// complete or given up) longer than this is a freeze.
pub const FREEZE: Duration = Duration::from_millis(500);

impl StreamStats {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate as f64,
            playout: (clock_rate == 90_000).then(Box::default),
            ..Default::default()
        }
    }

    /// The extended sequence number of `seq`: in the cycle of the highest so far, or the one
    /// before or after (RFC 3550 appendix A.1); cycles count from 1.
    fn extend(&self, seq: u16) -> u64 {
        match self.highest {
            None => (1u64 << 16) | seq as u64,
            Some(h) => {
                let base = h & !0xffff;
                let c = base | seq as u64;
                if c + 0x8000 < h {
                    c + 0x10000
                } else if c > h + 0x8000 && c >= 0x10000 {
                    c - 0x10000
                } else {
                    c
                }
            }
        }
    }

    /// The sender's SRTP rollover counter for `seq` (RFC 3711 §3.3.1): the wraps of the
    /// sequence number since the stream's first packet, which started the sender's count.
    pub fn rollovers(&self, seq: u16) -> u32 {
        let base = self.base.unwrap_or(1 << 16) >> 16;
        u32::try_from((self.extend(seq) >> 16).saturating_sub(base)).unwrap_or(u32::MAX)
    }

    /// Records one packet.
    pub fn on_packet(
        &mut self,
        now: Instant,
        seq: u16,
        rtp_time: u32,
        bytes: usize,
        frame_end: bool,
    ) {
        let ext = self.extend(seq);
        self.first = Some(self.first.map_or(ext, |f| f.min(ext)));
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.base = Some(self.base.map_or(ext, |b| b.min(ext)));
        self.packets += 1;
        self.received += 1;
        self.bytes += bytes as u64;
        self.first_packet_at.get_or_insert(now);
        // Jitter from arrival times against RTP timestamps.
        if self.clock_rate > 0.0 {
            let arrival = now
                .saturating_duration_since(crate::media::epoch())
                .as_secs_f64();
            let transit = arrival - rtp_time as f64 / self.clock_rate;
            if let Some(last) = self.last_transit {
                let d = (transit - last).abs();
                if d < 10.0 {
                    self.jitter += (d - self.jitter) / 16.0;
                }
            }
            self.last_transit = Some(transit);
        }
        if let Some(playout) = &mut self.playout
            && let Some(gap) = playout.on_packet(now, ext, frame_end, FREEZE)
        {
            self.freezes += 1;
            self.frozen += gap;
        }
    }

    /// Packets the sequence numbers say were sent.
    pub fn expected(&self) -> u64 {
        match (self.first, self.highest) {
            (Some(f), Some(h)) => h - f + 1,
            _ => 0,
        }
    }

    /// Fraction of expected packets not received.
    pub fn loss(&self) -> f64 {
        let e = self.expected();
        if e == 0 {
            0.0
        } else {
            (e.saturating_sub(self.packets)) as f64 / e as f64
        }
    }

    pub fn jitter(&self) -> Duration {
        Duration::from_secs_f64(self.jitter)
    }

    /// For an RTCP receiver report, since the stream began: the highest extended sequence
    /// number (RFC 3550 cycles in the upper 16 bits), packets expected and packets received,
    /// and the jitter in RTP timestamp units.
    pub fn since_start(&self) -> Option<SinceStart> {
        let (base, highest) = (self.base?, self.highest?);
        Some(SinceStart {
            highest: (highest - (1 << 16)) as u32,
            expected: (highest + 1).saturating_sub(base),
            received: self.received,
            jitter: (self.jitter * self.clock_rate) as u32,
        })
    }

    /// Packets the sequence numbers say were sent since the last call.
    pub fn take_expected(&mut self) -> u64 {
        let n = match (self.sampled_highest, self.highest, self.first) {
            (Some(s), Some(h), _) => h.saturating_sub(s),
            // A window that started after the last packet (`first` one past it) expects none
            // until the next arrives.
            (None, Some(h), Some(f)) => (h + 1).saturating_sub(f),
            _ => 0,
        };
        self.sampled_highest = self.highest;
        n
    }

    /// Resets the counters that describe a measurement window, keeping sequence state.
    pub fn start_window(&mut self) {
        self.first = self.highest.map(|h| h + 1);
        self.packets = 0;
        self.bytes = 0;
        self.freezes = 0;
        self.frozen = Duration::ZERO;
    }
}

/// What a receiver report says of a stream; see [`StreamStats::since_start`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SinceStart {
    pub highest: u32,
    pub expected: u64,
    pub received: u64,
    pub jitter: u32,
}

/// One received stream: its SSRC, kind and measurements.
#[derive(Clone)]
pub struct Received {
    pub ssrc: u32,
    pub video: bool,
    pub stats: StreamStats,
}

/// What arrived since the per-second sampler last looked, over all of a peer's streams.
#[derive(Clone, Default)]
pub struct Tick {
    pub packets: u64,
    pub bytes: u64,
    pub latency: Histogram,
}

/// How a light receiver (see [`crate::light`]) handled the RTP packets of the window.
#[derive(Clone, Copy, Default, Debug, Serialize)]
pub struct LightCounts {
    /// Measured from the clear header alone, never decrypted.
    pub header_only: u64,
    /// Chosen for the sample and passed to the peer connection to authenticate and decrypt.
    pub sampled: u64,
    /// Sampled packets that came out of the peer connection authenticated and decrypted (the
    /// rest failed: a broken stream).
    pub authenticated: u64,
    /// Of those, the ones the light receiver's own transport decrypted
    /// ([`crate::transport`]; the rest went through a peer connection, toward full-ICE servers).
    pub own_transport: u64,
    /// Datagrams read short (outside the sample) that were neither RTP of a negotiated
    /// payload type nor small enough to be read whole: dropped unmeasured. None is expected
    /// (STUN and RTCP fit the short read); more than a few means the short read is too short.
    pub unreadable: u64,
}

/// Everything a peer receives: one entry per stream, its latency over the window, and the
/// current tick.
#[derive(Clone, Default)]
pub struct Reception {
    pub streams: Vec<Received>,
    /// Send-to-receive latency of every packet of the window that carried a send time.
    pub latency: Histogram,
    pub tick: Tick,
    pub light: LightCounts,
}

/// One received RTP packet, as the measurements need it.
pub struct Arrival {
    pub now: Instant,
    pub ssrc: u32,
    pub video: bool,
    pub seq: u16,
    pub rtp_time: u32,
    pub bytes: usize,
    pub marker: bool,
    /// The send time carried in the payload, if it had one.
    pub sent: Option<Instant>,
}

impl Reception {
    /// The SRTP rollover counter of packet `seq` of stream `ssrc` (0 for a stream not seen).
    pub fn rollovers(&self, ssrc: u32, seq: u16) -> u32 {
        self.streams
            .iter()
            .find(|s| s.ssrc == ssrc)
            .map_or(0, |s| s.stats.rollovers(seq))
    }

    pub fn on_packet(&mut self, a: Arrival) {
        let i = match self.streams.iter().position(|s| s.ssrc == a.ssrc) {
            Some(i) => i,
            None => {
                self.streams.push(Received {
                    ssrc: a.ssrc,
                    video: a.video,
                    stats: StreamStats::new(if a.video { 90_000 } else { 48_000 }),
                });
                self.streams.len() - 1
            }
        };
        let s = &mut self.streams[i].stats;
        s.on_packet(a.now, a.seq, a.rtp_time, a.bytes, a.video && a.marker);
        self.tick.packets += 1;
        self.tick.bytes += a.bytes as u64;
        if let Some(sent) = a.sent {
            let latency = a.now.saturating_duration_since(sent);
            self.latency.record(latency);
            self.tick.latency.record(latency);
        }
    }

    /// The streams of one kind.
    pub fn of(&self, video: bool) -> impl Iterator<Item = &StreamStats> {
        self.streams
            .iter()
            .filter(move |s| s.video == video)
            .map(|s| &s.stats)
    }

    pub fn first_packet_at(&self) -> Option<Instant> {
        self.streams
            .iter()
            .filter_map(|s| s.stats.first_packet_at)
            .min()
    }

    /// Starts the measurement window on every stream.
    pub fn start_window(&mut self) {
        for s in &mut self.streams {
            s.stats.start_window();
        }
        self.latency.clear();
        self.light = LightCounts::default();
    }
}

/// Summary percentiles over peers.
#[derive(Debug, Serialize, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| values[((values.len() as f64 - 1.0) * q).round() as usize];
        Some(Self {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: values[values.len() - 1],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a light receiver tells its SRTP decryption: the sender's count of wraps since the
    /// stream's first packet, which it cannot guess from the sample alone.
    #[test]
    fn rollovers_count_the_wraps_since_the_first_packet() {
        let mut r = Reception::default();
        assert_eq!(r.rollovers(7, 100), 0, "a stream not seen yet");
        let now = Instant::now();
        for seq in [65_500u16, 65_535, 0, 1, 20_000, 40_000, 60_000, 5] {
            r.on_packet(Arrival {
                now,
                ssrc: 7,
                video: true,
                seq,
                rtp_time: 0,
                bytes: 100,
                marker: false,
                sent: None,
            });
        }
        assert_eq!(r.rollovers(7, 6), 2, "two wraps since 65,500");
        assert_eq!(
            r.rollovers(7, 65_100),
            1,
            "a late packet from before the last wrap"
        );
        assert_eq!(r.rollovers(8, 6), 0, "another stream");
    }

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).unwrap().as_secs_f64() * 1e3;
        let p99 = h.quantile(0.99).unwrap().as_secs_f64() * 1e3;
        assert!((49.0..53.0).contains(&p50), "{p50}");
        assert!((98.0..104.0).contains(&p99), "{p99}");
        // Sparse: 100 samples over two decades fill some 100 buckets of 449; none when empty.
        assert!(
            h.buckets.len() <= 100 && h.buckets.is_sorted(),
            "{}",
            h.buckets.len()
        );
        let mut empty = Histogram::default();
        empty.merge(&Histogram::default());
        assert!(empty.buckets.is_empty() && empty.quantile(0.5).is_none());
        // Merging keeps the order and the counts: the same quantiles.
        empty.merge(&h);
        assert_eq!(empty.quantile(0.5), h.quantile(0.5));
        empty.record(Duration::from_secs(1000));
        assert_eq!(empty.count(), 101);
        assert!(
            empty.quantile(1.0).unwrap() > Duration::from_secs(100),
            "the last bucket"
        );
        empty.clear();
        assert!(empty.quantile(0.5).is_none());
    }

    #[test]
    fn loss_counts_gaps_across_a_wrap() {
        let mut s = StreamStats::new(90_000);
        let now = Instant::now();
        for seq in [65_534u16, 65_535, 1, 2] {
            s.on_packet(now, seq, 0, 100, false);
        }
        assert_eq!(s.expected(), 5);
        assert!((s.loss() - 0.2).abs() < 1e-9);
        // A receiver report counts the cycle: 65,534 was in cycle 0, 2 is in cycle 1.
        let r = s.since_start().unwrap();
        assert_eq!((r.highest, r.expected, r.received), ((1 << 16) | 2, 5, 4));
    }

    #[test]
    fn freezes_are_gaps_between_frames() {
        let mut s = StreamStats::new(90_000);
        let t = Instant::now();
        s.on_packet(t, 1, 0, 100, true);
        s.on_packet(t + Duration::from_millis(100), 2, 0, 100, true);
        s.on_packet(t + Duration::from_millis(800), 3, 0, 100, true);
        assert_eq!(s.freezes, 1);
        assert_eq!(s.frozen, Duration::from_millis(700));
    }
}
