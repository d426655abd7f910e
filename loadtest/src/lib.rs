//! The load tester: many real WebRTC peers in one process, measured per peer.
//!
//! Each simulated peer is a full WebRTC endpoint (ICE, DTLS, SRTP from webrtc-rs's sans-IO
//! core `rtc`) with its own UDP socket, as a real client would have, driven by one tokio task.
//! Publishers send synthetic VP8-like video (optionally simulcast) and Opus-like audio with
//! realistic packet sizes, keyframes and send times inside; receivers measure join time, time
//! to first media, bitrate, loss, latency, jitter and freezes. Light receivers ([`light`])
//! measure most media from the clear RTP header and decrypt only a sample, for a fraction of
//! the CPU per packet. The same scenario runs against this project's nodes (WebSocket
//! signaling, placed by the control plane when there is one), any WHIP/WHEP server, or
//! Janus's VideoRoom.
//!
//! The file list is the architecture: [`scenario`] and [`cli`] say what to run; [`run`] runs
//! it; [`peer`] is one participant, over [`conn`] (a peer connection on its socket, full or
//! [`light`]), [`sender`] (what a publisher sends, from [`media`]) and [`signal`] (how it
//! joins each target); [`state`], [`stats`] (with [`playout`]: when a frame could be shown)
//! and [`series`] hold the measurements;
//! [`stamped`] reads datagrams with their kernel arrival time, when [`read_pace`] says;
//! [`procstat`] reads CPU and
//! memory; [`report`], [`progress`] and [`plot`] show the results. [`impair`] is a lossy,
//! jittery UDP path in process, for tests and measurements on machines without netem.

pub mod cli;
pub mod conn;
pub mod impair;
pub mod light;
pub mod media;
pub mod peer;
pub mod playout;
pub mod plot;
pub mod procstat;
pub mod progress;
pub mod read_pace;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sender;
pub mod series;
pub mod signal;
pub mod stamped;
pub mod state;
pub mod stats;
pub mod transport;
