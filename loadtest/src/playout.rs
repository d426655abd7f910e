//! When a receiver could show each video frame, from RTP sequence numbers and marker bits
//! alone (so light receivers, which read only headers, measure it too).
//!
//! A frame is the packets after the previous marker up to and including its own marker. It
//! is shown once it and every frame before it are complete, as a decoder whose frames refer to
//! the previous one must wait: a lost packet stalls the picture until a retransmission fills
//! the hole. A hole still open after [`GIVE_UP`] is abandoned and playing resumes at the next
//! frame that starts after it, as a keyframe requested by the receiver would resume it.
//!
//! So a stream that loses packets and never gets them back freezes about once per loss, and
//! one whose losses are repaired in time does not: the difference the freeze count of raw
//! marker-bit arrivals cannot see, since most frames' markers arrive even when other packets
//! of the frame do not.
//!
//! Memory: two bitmaps over the last [`WINDOW`] sequence numbers (256 bytes per stream).

use std::time::{Duration, Instant};

/// Sequence numbers remembered (about 6 s of 1.5 Mbps video).
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// How long a hole may stall the picture before it is given up (the time a receiver takes to
/// ask for and get a keyframe, roughly).
pub const GIVE_UP: Duration = Duration::from_secs(1);

/// See the module documentation.
#[derive(Clone)]
pub struct Playout {
    /// One bit per extended sequence number in `(highest - WINDOW, highest]`.
    received: [u64; WORDS],
    /// Of those, the packets that ended a frame.
    marker: [u64; WORDS],
    highest: Option<u64>,
    /// The first sequence number of the next frame to show (`None` before the first marker).
    next: Option<u64>,
    /// Every sequence number in `next..scan` has arrived and none ended a frame.
    scan: u64,
    /// Since when a hole at `scan` (a later packet arrived, this one not) stalls the picture.
    blocked_since: Option<Instant>,
    last_shown: Option<Instant>,
}

impl Default for Playout {
    fn default() -> Self {
        Self {
            received: [0; WORDS],
            marker: [0; WORDS],
            highest: None,
            next: None,
            scan: 0,
            blocked_since: None,
            last_shown: None,
        }
    }
}

fn bit(map: &[u64; WORDS], seq: u64) -> bool {
    let i = (seq % WINDOW) as usize;
    map[i / 64] & (1 << (i % 64)) != 0
}

fn set(map: &mut [u64; WORDS], seq: u64, on: bool) {
    let i = (seq % WINDOW) as usize;
    if on {
        map[i / 64] |= 1 << (i % 64);
    } else {
        map[i / 64] &= !(1 << (i % 64));
    }
}

impl Playout {
    /// A packet with extended sequence number `ext` arrived at `now`; `frame_end` is its
    /// marker bit. Returns the length of the freeze that showing a frame now ends, if the
    /// picture stood still for longer than `freeze`.
    pub fn on_packet(
        &mut self,
        now: Instant,
        ext: u64,
        frame_end: bool,
        freeze: Duration,
    ) -> Option<Duration> {
        let highest = self.highest.unwrap_or(ext);
        if ext + WINDOW <= highest {
            return None; // Too old to matter: its frame was shown or given up long ago.
        }
        if ext > highest || self.highest.is_none() {
            // The ring's slots for the sequence numbers between now belong to them.
            let from = if self.highest.is_none() {
                ext
            } else {
                highest + 1
            };
            if ext - from >= WINDOW {
                self.received = [0; WORDS];
                self.marker = [0; WORDS];
            } else {
                for s in from..=ext {
                    set(&mut self.received, s, false);
                    set(&mut self.marker, s, false);
                }
            }
            self.highest = Some(ext);
        }
        set(&mut self.received, ext, true);
        set(&mut self.marker, ext, frame_end);
        let Some(next) = self.next else {
            // Playing starts with the first frame that ends.
            if frame_end {
                self.next = Some(ext + 1);
                self.scan = ext + 1;
                self.last_shown = Some(now);
            }
            return None;
        };
        if ext < next {
            return None; // A late copy of a frame already shown or given up.
        }
        self.advance(now, freeze)
    }

    /// Shows every frame that is complete, in order; gives up a hole that stalled too long.
    fn advance(&mut self, now: Instant, freeze: Duration) -> Option<Duration> {
        let highest = self.highest?;
        let mut frozen = None;
        loop {
            // A hole that fell out of the window can never be filled.
            if self.scan + WINDOW <= highest {
                self.give_up(highest);
            }
            while self.scan <= highest && bit(&self.received, self.scan) {
                let end = bit(&self.marker, self.scan);
                self.scan += 1;
                if end {
                    if let Some(last) = self.last_shown {
                        let gap = now.saturating_duration_since(last);
                        if gap > freeze {
                            frozen = Some(frozen.map_or(gap, |f: Duration| f.max(gap)));
                        }
                    }
                    self.last_shown = Some(now);
                    self.next = Some(self.scan);
                    self.blocked_since = None;
                }
            }
            if self.scan > highest {
                // Waiting for packets not sent yet: no hole.
                self.blocked_since = None;
                return frozen;
            }
            let since = *self.blocked_since.get_or_insert(now);
            if now.saturating_duration_since(since) < GIVE_UP {
                return frozen;
            }
            self.give_up(highest);
        }
    }

    /// Resumes at the first frame starting after the hole at `scan` (after the next frame
    /// end that arrived), or, if no frame has ended since, at whatever comes next.
    fn give_up(&mut self, highest: u64) {
        let from = self.scan.max(highest.saturating_sub(WINDOW - 1));
        let resume = (from..=highest)
            .find(|&s| bit(&self.received, s) && bit(&self.marker, s))
            .unwrap_or(highest);
        self.scan = resume + 1;
        self.next = Some(resume + 1);
        self.blocked_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREEZE: Duration = Duration::from_millis(500);

    /// Frames of three packets every 33 ms, sequence numbers from 100; `skip` says which
    /// packets are lost. Returns the freezes seen.
    fn play(frames: u64, skip: impl Fn(u64) -> bool) -> Vec<Duration> {
        let t = Instant::now();
        let mut p = Playout::default();
        let mut freezes = Vec::new();
        for f in 0..frames {
            let at = t + Duration::from_millis(33 * f);
            for k in 0..3 {
                let seq = 100 + f * 3 + k;
                if !skip(seq) {
                    freezes.extend(p.on_packet(at, seq, k == 2, FREEZE));
                }
            }
        }
        freezes
    }

    #[test]
    fn complete_frames_play_without_freezes() {
        assert!(play(300, |_| false).is_empty());
    }

    #[test]
    fn an_unrepaired_loss_stalls_the_picture_until_given_up() {
        // One packet in the middle of frame 10 never comes: the picture stands still for
        // about a second, once.
        let freezes = play(300, |s| s == 100 + 30 + 1);
        assert_eq!(freezes.len(), 1, "{freezes:?}");
        assert!(freezes[0] >= GIVE_UP && freezes[0] < GIVE_UP + FREEZE);
    }

    #[test]
    fn a_repaired_loss_does_not_freeze() {
        let t = Instant::now();
        let mut p = Playout::default();
        let ms = Duration::from_millis;
        assert_eq!(p.on_packet(t, 9, true, FREEZE), None);
        // 10 is lost, 11 ends the frame; the retransmission of 10 comes 100 ms later.
        p.on_packet(t + ms(33), 11, true, FREEZE);
        p.on_packet(t + ms(66), 12, true, FREEZE);
        assert_eq!(p.on_packet(t + ms(133), 10, false, FREEZE), None);
        assert_eq!(p.last_shown, Some(t + ms(133)), "frames 11 and 12 shown");
        // Repaired after 600 ms instead: a freeze of that length.
        assert_eq!(p.on_packet(t + ms(166), 14, true, FREEZE), None);
        assert_eq!(
            p.on_packet(t + ms(766), 13, false, FREEZE),
            Some(ms(766 - 133))
        );
    }

    #[test]
    fn jumps_and_late_copies_do_not_break_it() {
        let t = Instant::now();
        let mut p = Playout::default();
        let ms = Duration::from_millis;
        p.on_packet(t, 1, true, FREEZE);
        // A jump far past the window (a restarted stream) and then a late copy of 1.
        p.on_packet(t + ms(10), 50_000, true, FREEZE);
        p.on_packet(t + ms(20), 1, true, FREEZE);
        for s in 50_001..50_100 {
            p.on_packet(t + ms(20 + s - 50_000), s, true, FREEZE);
        }
        assert_eq!(p.next, Some(50_100));
    }
}
