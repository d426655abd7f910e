//! The sans-IO forwarding core of the SFU.
//!
//! **Contract: this crate computes and nothing else.** It owns no socket, task, lock or clock.
//! Every entry point takes the current time as an argument; every effect comes back as an
//! [`Output`] to be drained with [`Room::poll_output`]; [`Room::poll_timeout`] says when to call
//! [`Room::handle_timeout`]. That makes every forwarding rule testable deterministically and lets
//! the node shard rooms over worker threads that each own their rooms with `&mut`.
//!
//! The pieces, in the vocabulary of the design:
//! - [`Room`]: the media plane of one room on one node: tracks and subscriptions.
//! - [`Track`]: a published source with its simulcast [layers](track::Layer), each with a
//!   [retransmission cache](retransmit::RetransmissionCache) and a
//!   [keyframe request coalescer](keyframe::KeyframeRequester).
//! - [`Subscription`]: one track delivered to one sink (a local subscriber or a relay link),
//!   through a [`Forwarder`] that rewrites SSRC, sequence numbers and timestamps.

pub mod allocator;
pub mod bandwidth;
pub mod clock;
pub mod codec;
pub mod downlink;
pub mod edits;
pub mod forwarder;
pub mod ids;
pub mod keyframe;
pub mod probe;
pub mod rate;
pub mod red;
pub mod resend;
pub mod retransmit;
pub mod room;
mod room_media;
mod room_relay;
mod room_tick;
pub mod seq;
pub mod speakers;
pub mod subscription;
pub mod track;
pub mod trendline;
pub mod twcc_feedback;
pub mod vp8;

pub use clock::WallClock;
pub use codec::{Codec, MediaKind};
pub use downlink::SinkParams;
pub use edits::{PacketEdits, Vp8Edit};
pub use forwarder::{DropReason, Forwarder, ForwarderConfig, Rewrite};
pub use ids::{IdMap, LayerIndex, SinkId, SubscriptionId, TrackId};
pub use room::{Output, Room, RoomConfig, RoomError, RoomStats};
pub use speakers::{Speaker, SpeakerConfig};
pub use subscription::{
    RtxParams, SenderReport, Subscription, SubscriptionParams, SubscriptionSettings,
};
pub use track::{Track, TrackInfo, TrackSource};

/// The RTP packet type the core forwards (from webrtc-rs).
pub use rtp::packet::Packet;
