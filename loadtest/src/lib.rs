//! The load tester: many real WebRTC peers in one process, measured per peer.
//!
//! Each simulated peer is a full WebRTC endpoint (ICE, DTLS, SRTP from webrtc-rs's sans-IO
//! core) with its own UDP socket, as a real client would have. Publishers send synthetic media
//! with realistic packet sizes, keyframes and embedded send times; subscribers measure loss,
//! latency, jitter, bitrate and freezes.

pub mod media;
pub mod peer;
pub mod procstat;
pub mod report;
pub mod run;
pub mod stats;
pub mod target;
