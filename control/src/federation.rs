//! Federation records in the registry (see the node's `federation` module and
//! `docs/federation.md`):
//!
//! - `<prefix>federation/rooms/<room>`: a [`RoomMapping`], written by an administrator (the
//!   gateway's admin API or `FederationService`), bound to no lease.
//! - `<prefix>federation/peers/<peer>/<gateway>`: a [`PeerRecord`], written by each gateway
//!   under its lease: the peers it is configured for, whether the link is up, and the rooms both
//!   sides map.

use crate::records::Keys;
use serde::{Deserialize, Serialize};

/// Our side of one mapping: our `room` is joined with the peer's `peer_room`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomMapping {
    pub room: String,
    pub peer: String,
    pub peer_room: String,
}

/// A gateway's view of one peer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PeerRecord {
    pub peer: String,
    pub gateway: String,
    pub linked: bool,
    /// Our rooms both sides map now.
    pub active_rooms: Vec<String>,
}

pub fn rooms_prefix(keys: &Keys) -> String {
    format!("{}federation/rooms/", keys.prefix())
}

pub fn room_key(keys: &Keys, room: &str) -> String {
    format!("{}{room}", rooms_prefix(keys))
}

pub fn peers_prefix(keys: &Keys) -> String {
    format!("{}federation/peers/", keys.prefix())
}

pub fn peer_key(keys: &Keys, peer: &str, gateway: &str) -> String {
    format!("{}{peer}/{gateway}", peers_prefix(keys))
}
