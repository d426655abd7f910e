//! Room mappings: which of our rooms is joined with which room of which peer. Kept in the
//! cluster's etcd (`<prefix>federation/rooms/<room>`, not bound to any lease: a mapping outlives
//! gateways), so every gateway of the cluster, and the one that takes over, sees the same ones.
//! A room crosses only while both sides map it to each other (see [`super::link`]).
//!
//! The peers' tracks an administrator stopped in our cluster are kept beside the mappings
//! (`<prefix>federation/stopped/<room>/<track>`); unmapping a room forgets its stops.

pub use sfu_control::federation::{RoomMapping, Stop};
use sfu_control::{EtcdRegistry, Membership, Registry, federation, registry::RegistryError};
use std::collections::BTreeMap;
use std::sync::RwLock;

/// The mappings, as last read.
pub struct Mappings {
    registry: EtcdRegistry,
    membership: Membership,
    prefix: String,
    /// Our room → its mapping.
    current: RwLock<BTreeMap<String, RoomMapping>>,
}

impl Mappings {
    pub fn new(registry: EtcdRegistry, membership: Membership) -> Self {
        Self {
            registry,
            prefix: federation::rooms_prefix(membership.keys()),
            membership,
            current: RwLock::new(BTreeMap::new()),
        }
    }

    /// Maps our `room` to the peer's `peer_room` (replacing a mapping of `room`).
    pub async fn map(&self, m: RoomMapping) -> Result<(), RegistryError> {
        let value = serde_json::to_vec(&m).unwrap_or_default();
        self.registry
            .put_persistent(&format!("{}{}", self.prefix, m.room), value)
            .await?;
        self.refresh().await
    }

    /// Removes the mapping of our `room`; false if there was none.
    pub async fn unmap(&self, room: &str) -> Result<bool, RegistryError> {
        self.refresh().await?;
        if !self.read().contains_key(room) {
            return Ok(false);
        }
        self.registry
            .delete(&format!("{}{room}", self.prefix))
            .await?;
        federation::forget_stops(&self.registry, self.membership.keys(), room).await?;
        self.refresh().await?;
        Ok(true)
    }

    /// Stops forwarding a peer's `track` in our `room` (see [`super::link`]'s `stop`).
    pub async fn stop(&self, room: &str, track: &str) -> Result<Stop, RegistryError> {
        federation::stop_track(&self.registry, &self.membership, room, track).await
    }

    /// Forwards a stopped track again; false if it was not stopped.
    pub async fn resume(&self, room: &str, track: &str) -> Result<bool, RegistryError> {
        federation::resume_track(&self.registry, self.membership.keys(), room, track).await
    }

    /// The tracks stopped in our `room`, read from the registry now.
    pub async fn stopped(&self, room: &str) -> Result<Vec<String>, RegistryError> {
        federation::stopped_tracks(&self.registry, self.membership.keys(), room).await
    }

    /// Reads them from the registry again.
    pub async fn refresh(&self) -> Result<(), RegistryError> {
        let (listing, _) = self.registry.list(&self.prefix).await?;
        let fresh: BTreeMap<String, RoomMapping> = listing
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<RoomMapping>(&v).ok())
            .map(|m| (m.room.clone(), m))
            .collect();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The mappings as last read.
    pub fn read(&self) -> BTreeMap<String, RoomMapping> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Our mappings with one peer: our room → the peer's.
    pub fn with_peer(&self, peer: &str) -> BTreeMap<String, String> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|m| m.peer == peer)
            .map(|m| (m.room.clone(), m.peer_room.clone()))
            .collect()
    }
}
