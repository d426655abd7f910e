//! Admission to rooms with a participant limit, held cluster-wide.
//!
//! A room created through the API with `max_participants = N` admits at most N sessions over
//! the whole cluster. Each node holds some of the N places (a reservation record in etcd) and
//! admits its joins from them without asking etcd; when it has none spare it reserves a block
//! in one transaction that holds only if no node changed its reservation meanwhile (see
//! [`Membership::reserve`]). Blocks shrink as the room fills and spare places go back after a
//! moment, so a join is refused only when the room is full; a node that finds no place free
//! tries again for a little while, as another node's spare places come back.
//!
//! - The limit is read from the registry view, or from etcd itself while the view does not
//!   know the room (a node that has not yet seen a room's creation must not admit without a
//!   limit); a room with no configuration is remembered as such for a few seconds, so joins
//!   into unlimited rooms cost the registry nothing.
//! - Every session takes its own place, WHEP players sharing one viewer token included. A
//!   session that replaces an older one with the same identity (a reload) ends the old one
//!   first, so its place is free again.

use crate::media::{AdminOp, Command, JoinRequest, MediaPlane};
use crate::signaling::protocol::{ErrorCode, SignalError};
use sfu_control::Membership;
use sfu_control::records::RoomConfig;
use sfu_control::registry::RegistryError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Tries for a place before a join is refused as `room_full`, and the pause between them
/// (spare places of other nodes go back within about two seconds).
const PLACE_ATTEMPTS: usize = 6;
const PLACE_RETRY: Duration = Duration::from_millis(500);
/// How long "this room has no configuration" is believed without asking etcd again.
const UNLIMITED_FOR: Duration = Duration::from_secs(2);

fn unreachable(e: RegistryError) -> SignalError {
    SignalError::new(
        ErrorCode::Internal,
        format!("cannot reach the registry to admit: {e}"),
    )
}

/// See the module documentation.
pub struct Admission {
    membership: Membership,
    node: String,
    /// Rooms etcd had no configuration for, and when it said so.
    unlimited: Mutex<HashMap<String, Instant>>,
}

impl Admission {
    pub fn new(membership: Membership, node: String) -> Self {
        Self {
            membership,
            node,
            unlimited: Mutex::default(),
        }
    }

    /// Takes a place for a joining session if its room has a limit: `Ok(true)` if it took
    /// one (given back when the session leaves), `Ok(false)` for rooms without a limit.
    pub async fn admit(
        &self,
        media: &MediaPlane,
        request: &JoinRequest,
    ) -> Result<bool, SignalError> {
        let limit = self.room_limit(&request.room).await?;
        if limit == 0 {
            return Ok(false);
        }
        // The worker applies the old session's leave (its place given back included) before
        // it answers, and the membership task handles that before our reservation.
        let replaced = media
            .request_each(true, |reply| Command::Admin {
                op: AdminOp::EndReplaced {
                    room: request.room.clone(),
                    identity: request.grants.identity.clone(),
                    kind: request.kind.clone(),
                },
                reply,
            })
            .await;
        if let Err(e) = replaced {
            tracing::debug!(room = request.room, "ending a replaced session: {e:?}");
        }
        take_place(&self.membership, &self.node, &request.room, limit).await
    }

    /// The participant limit of `room` (0: none).
    pub async fn room_limit(&self, room: &str) -> Result<u32, SignalError> {
        if let Some(c) = self.membership.room_config(room) {
            return Ok(c.max_participants);
        }
        let now = Instant::now();
        {
            let mut unlimited = self.unlimited.lock().unwrap_or_else(|e| e.into_inner());
            unlimited.retain(|_, t| now.saturating_duration_since(*t) < UNLIMITED_FOR);
            if unlimited.contains_key(room) {
                return Ok(0);
            }
        }
        let limit = room_limit(&self.membership, room).await?;
        if limit == 0 {
            self.unlimited
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room.to_owned(), now);
        }
        Ok(limit)
    }
}

/// The participant limit of `room` as etcd has it now (0: none, or no room created through
/// the API).
pub async fn room_limit(membership: &Membership, room: &str) -> Result<u32, SignalError> {
    let key = membership.keys().room_config(room);
    let (kvs, _) = membership.read(&key).await.map_err(unreachable)?;
    Ok(kvs
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| serde_json::from_slice::<RoomConfig>(v).ok())
        .map_or(0, |c| c.max_participants))
}

/// Takes one of the `limit` places of `room` for this node; `room_full` if none is free after
/// a few tries.
pub async fn take_place(
    membership: &Membership,
    node: &str,
    room: &str,
    limit: u32,
) -> Result<bool, SignalError> {
    for attempt in 0..PLACE_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(PLACE_RETRY).await;
        }
        if membership
            .reserve(room, node, limit)
            .await
            .map_err(unreachable)?
        {
            return Ok(true);
        }
    }
    Err(SignalError::new(
        ErrorCode::RoomFull,
        format!("room {room} is full ({limit} participants)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfu_control::registry::{MemoryRegistry, Registry};
    use sfu_control::{ClusterEvent, Keys};
    use std::time::Duration;
    use tokio::sync::mpsc;

    async fn registered(keys: &Keys, registry: &MemoryRegistry) -> Membership {
        let (tx, _rx) = mpsc::unbounded_channel::<ClusterEvent>();
        // The events are not needed; dropping the receiver is fine for the task.
        let m = Membership::start(registry.clone(), keys.clone(), Duration::from_secs(3), tx);
        while !m.registered() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        m
    }

    #[tokio::test]
    async fn a_limit_set_a_moment_ago_holds_before_the_view_has_it() {
        let registry = MemoryRegistry::new();
        let keys = Keys::new("t");
        let m = registered(&keys, &registry).await;
        let config = RoomConfig {
            name: "fresh".into(),
            max_participants: 2,
            ..Default::default()
        };
        registry
            .put_persistent(
                &keys.room_config("fresh"),
                serde_json::to_vec(&config).unwrap(),
            )
            .await
            .unwrap();
        // Nothing has yielded to the membership task since the write: its view is stale.
        assert!(m.room_config("fresh").is_none(), "the view lags");
        let admission = Admission::new(m.clone(), "n1".into());
        assert_eq!(admission.room_limit("fresh").await.unwrap(), 2);
        assert!(take_place(&m, "n1", "fresh", 2).await.unwrap());
        assert!(take_place(&m, "n1", "fresh", 2).await.unwrap());
        let full = take_place(&m, "n1", "fresh", 2).await.unwrap_err();
        assert_eq!(full.code, ErrorCode::RoomFull);
        // A place given back can be taken again.
        m.release("fresh");
        assert!(take_place(&m, "n1", "fresh", 2).await.unwrap());
        assert_eq!(admission.room_limit("no-such-room").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn nodes_racing_for_places_never_hold_more_than_the_limit() {
        let registry = MemoryRegistry::new();
        let keys = Keys::new("t");
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(registered(&keys, &registry).await);
        }
        let joins = (0..60).map(|i| {
            let m = nodes[i % 3].clone();
            tokio::spawn(async move { take_place(&m, &format!("n{}", i % 3), "r", 25).await })
        });
        let results = futures_util::future::join_all(joins).await;
        let admitted = results.iter().filter(|r| matches!(r, Ok(Ok(true)))).count();
        assert_eq!(admitted, 25, "exactly the limit, over three nodes");
        let (kvs, _) = registry.list(&keys.reservations_prefix("r")).await.unwrap();
        let reserved: u32 = kvs
            .iter()
            .map(|(_, v)| {
                serde_json::from_slice::<sfu_control::records::ReservationRecord>(v)
                    .unwrap()
                    .reserved
            })
            .sum();
        assert!(reserved <= 25, "reserved {reserved}");
    }
}
