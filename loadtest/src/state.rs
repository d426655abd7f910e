//! How one simulated peer is doing, shared between its task (which writes it) and the run
//! controller (which reads it for progress, the per-second series and the report).
//!
//! One uncontended mutex per peer: the peer's task locks it once per received packet, the
//! controller once per second. Nothing in it grows with the length of a run.

use crate::stats::{Histogram, Reception};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A peer's state; see the module documentation.
#[derive(Clone, Default)]
pub struct PeerState {
    /// When the peer started to join (before signaling).
    pub started: Option<Instant>,
    /// When its first peer connection reached `connected` (ICE and DTLS done).
    pub connected_at: Option<Instant>,
    /// The server it joined (for `sfu` with a control plane, the node it was placed on).
    pub server: Option<String>,
    /// Why it stopped early, if it did.
    pub failed: Option<String>,
    /// What it received, per stream.
    pub reception: Reception,
    /// RTP packets it sent (publishers).
    pub packets_sent: u64,
    /// Keyframe requests (PLI or FIR) it received (publishers).
    pub keyframe_requests: u64,
    /// Times it lost its node's signaling and joined again with media flowing.
    pub reconnects: u32,
    /// From each such loss to media flowing again (received, or sent for a publisher that
    /// receives nothing).
    pub reconnect_time: Histogram,
    /// `packets_sent` and `keyframe_requests` when the measurement window started.
    window_base: (u64, u64),
}

impl PeerState {
    /// Starts the measurement window: counters from here on describe the window.
    pub fn start_window(&mut self) {
        self.reception.start_window();
        self.window_base = (self.packets_sent, self.keyframe_requests);
    }

    /// RTP packets sent and keyframe requests received in the window.
    pub fn sent_in_window(&self) -> (u64, u64) {
        (
            self.packets_sent - self.window_base.0,
            self.keyframe_requests - self.window_base.1,
        )
    }

    /// From starting to join until connected.
    pub fn join_time(&self) -> Option<Duration> {
        Some(self.connected_at?.saturating_duration_since(self.started?))
    }

    /// From starting to join until the first media packet arrived.
    pub fn first_media(&self) -> Option<Duration> {
        Some(
            self.reception
                .first_packet_at()?
                .saturating_duration_since(self.started?),
        )
    }
}

/// A peer's state as shared with the controller.
pub type Shared = Arc<Mutex<PeerState>>;

/// Locks a peer's state. A peer task that panicked cannot leave it half-written in a way that
/// matters (every update is a few counters), so a poisoned lock is used as it is.
pub fn lock(s: &Shared) -> MutexGuard<'_, PeerState> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}
