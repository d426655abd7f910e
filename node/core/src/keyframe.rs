//! Keyframe request coalescing.
//!
//! Every subscriber that joins, loses packets beyond repair or switches layer wants a keyframe.
//! Passing each request to the publisher would make it send keyframes back to back (each one
//! several times the size of a normal frame) for a big room. A [`KeyframeRequester`] per
//! publisher layer lets at most one request through per [`MIN_INTERVAL`]; a request that arrives
//! inside the window is remembered and sent when the window ends, unless a keyframe arrived in the
//! meantime and already satisfied it.

use std::time::{Duration, Instant};

/// Minimum time between two keyframe requests sent for one publisher layer.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Coalesces keyframe requests for one publisher layer.
#[derive(Debug, Default, Clone)]
pub struct KeyframeRequester {
    last_sent: Option<Instant>,
    pending: bool,
}

impl KeyframeRequester {
    /// Records a request. Returns `true` if a request should go to the publisher now; otherwise
    /// it is held until [`poll`](Self::poll) releases it.
    pub fn request(&mut self, now: Instant) -> bool {
        if self.window_open(now) {
            self.last_sent = Some(now);
            self.pending = false;
            true
        } else {
            self.pending = true;
            false
        }
    }

    /// A keyframe arrived: any held request is satisfied.
    pub fn on_keyframe(&mut self) {
        self.pending = false;
    }

    /// Releases a held request once the window has ended.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.pending && self.window_open(now) {
            self.pending = false;
            self.last_sent = Some(now);
            true
        } else {
            false
        }
    }

    /// Sends a request if none went out for `after`: used to retry for subscribers that are
    /// still waiting, in case the keyframe or the request itself was lost.
    pub fn request_if_idle(&mut self, now: Instant, after: Duration) -> bool {
        let idle = self
            .last_sent
            .is_none_or(|last| now.saturating_duration_since(last) >= after);
        if idle {
            self.last_sent = Some(now);
            self.pending = false;
        }
        idle
    }

    /// When a held request will be released, if one is held.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.pending, self.last_sent) {
            (true, Some(last)) => Some(last + MIN_INTERVAL),
            _ => None,
        }
    }

    fn window_open(&self, now: Instant) -> bool {
        self.last_sent
            .is_none_or(|last| now.saturating_duration_since(last) >= MIN_INTERVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_requests_inside_a_window_send_one_now_and_one_later() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0), "the first request goes out at once");
        let mut sent = 0;
        for i in 1..100 {
            if k.request(t0 + Duration::from_millis(i)) {
                sent += 1;
            }
        }
        assert_eq!(sent, 0, "no request inside the window");
        assert_eq!(k.poll_timeout(), Some(t0 + MIN_INTERVAL));
        assert!(!k.poll(t0 + Duration::from_millis(499)));
        assert!(
            k.poll(t0 + MIN_INTERVAL),
            "the held request goes out when the window ends"
        );
        assert!(!k.poll(t0 + Duration::from_secs(5)), "and only once");
    }

    #[test]
    fn a_keyframe_satisfies_a_held_request() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0));
        assert!(!k.request(t0 + Duration::from_millis(100)));
        k.on_keyframe();
        assert!(!k.poll(t0 + Duration::from_secs(1)));
        assert_eq!(k.poll_timeout(), None);
    }

    #[test]
    fn requests_after_the_window_go_out_at_once() {
        let t0 = Instant::now();
        let mut k = KeyframeRequester::default();
        assert!(k.request(t0));
        assert!(k.request(t0 + Duration::from_millis(600)));
    }
}
