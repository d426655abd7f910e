//! The SFU node: one process of the mesh.
//!
//! - [`media`]: worker threads that own rooms, their WebRTC peer connections (webrtc-rs's
//!   sans-IO `rtc`) and a shared UDP socket each; the forwarding core (`sfu-core`) runs inside.
//! - [`http`]: WebSocket signaling, WHIP/WHEP, the demo page, health and metrics (axum).
//! - [`auth`]: LiveKit-compatible JWT access tokens.
//! - [`cluster`]: registry membership and relay links, routed to the media workers.
//! - [`federation`]: gateways linking two organisations' clusters.
//! - [`recording`]: tracks written to files (WebM, Matroska, MP4) through GStreamer.
//! - [`config`], [`metrics`], [`server`]: configuration, Prometheus metrics, start and stop.

/// Access tokens (shared with the control plane).
pub use sfu_control::auth;
pub mod admission;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod federation;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod media;
pub mod metrics;
pub mod recording;
pub mod server;
pub mod signaling;
pub mod webhook;

pub use config::Config;
pub use server::Server;
