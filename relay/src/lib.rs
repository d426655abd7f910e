//! Node-to-node relay links: how a room spans nodes.
//!
//! - [`core`]: the relay protocol as a sans-IO state machine (who feeds which track to whom,
//!   fan-out trees, loop prevention, hop-by-hop NACKs).
//! - [`nack`]: loss detection on relayed flows.
//! - [`wire`]: control-frame and datagram framing.
//! - [`glue`]: applying the relay's outputs to the forwarding core.
//! - [`direct`]: sealing relayed media for the workers' UDP sockets (the links' data path).
//! - [`quic`]: the links themselves, over QUIC (quinn) with mutual TLS from a cluster CA.
//! - [`certs`]: creating a development cluster CA and node certificates.

pub mod certs;
pub mod core;
mod core_feed;
mod core_want;
pub mod direct;
pub mod glue;
pub mod nack;
pub mod quic;
pub mod wire;

pub use crate::core::{NodeId, Output, Relay, RelayConfig, TrackKey};
/// The QUIC implementation links are made with, for users of [`quic::Link::connection`].
pub use quinn;
