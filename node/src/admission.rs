//! Admission to rooms with a participant limit, held cluster-wide.
//!
//! A room created through the API with `max_participants = N` has N slots in the registry.
//! Every session joining it claims a free slot in an etcd transaction (create-if-absent under
//! this node's lease), so however many joins race on however many nodes, at most N sessions
//! hold one. The slot goes when the session leaves, or with the node's lease if the node dies.
//!
//! - The limit is read from etcd at each join, not from the node's view of the registry: a
//!   node that has not yet seen a room's creation must not admit without a limit.
//! - Every session takes its own slot, WHEP players sharing one viewer token included. A
//!   session that replaces an older one with the same identity (a reload) ends the old one
//!   first, so its slot is free again before the new one claims.

use crate::media::{AdminOp, Command, JoinRequest, MediaPlane};
use crate::signaling::protocol::{ErrorCode, SignalError};
use rand::seq::SliceRandom;
use sfu_control::Membership;
use sfu_control::records::{RoomConfig, SlotRecord};
use sfu_control::registry::RegistryError;
use std::collections::HashSet;

/// Listings of the slots before giving up: each round tries every slot the listing shows
/// free, and only fails them all if other joins took them meanwhile.
const CLAIM_ROUNDS: usize = 4;

fn unreachable(e: RegistryError) -> SignalError {
    SignalError::new(
        ErrorCode::Internal,
        format!("cannot reach the registry to admit: {e}"),
    )
}

/// Claims a slot for a joining session if its room has a limit; returns the slot's key (to
/// release on leave), or `None` for rooms without a limit.
pub async fn admit(
    membership: &Membership,
    media: &MediaPlane,
    node: &str,
    request: &JoinRequest,
) -> Result<Option<String>, SignalError> {
    let limit = room_limit(membership, &request.room).await?;
    if limit == 0 {
        return Ok(None);
    }
    // The worker applies the old session's leave (its slot's release included) before it
    // answers, and the membership task handles that release before our claim.
    let replaced = media
        .request(&request.room, |reply| Command::Admin {
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
    claim_slot(
        membership,
        node,
        &request.room,
        &request.grants.identity,
        limit,
    )
    .await
    .map(Some)
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

/// Claims one of the `limit` slots of `room` for `identity`; `room_full` if none is free.
pub async fn claim_slot(
    membership: &Membership,
    node: &str,
    room: &str,
    identity: &str,
    limit: u32,
) -> Result<String, SignalError> {
    let keys = membership.keys().clone();
    let prefix = keys.slots_prefix(room);
    let record = SlotRecord {
        identity: identity.to_owned(),
        node: node.to_owned(),
    };
    for _ in 0..CLAIM_ROUNDS {
        let (taken, _) = membership.read(&prefix).await.map_err(unreachable)?;
        let used: HashSet<u32> = taken
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix)?.parse().ok())
            .collect();
        let mut free: Vec<u32> = (0..limit).filter(|n| !used.contains(n)).collect();
        if free.is_empty() {
            break;
        }
        // Different joiners try different slots first, so concurrent claims rarely collide.
        free.shuffle(&mut rand::rng());
        for n in free {
            let key = keys.slot(room, n);
            if membership
                .claim(key.clone(), &record)
                .await
                .map_err(unreachable)?
            {
                return Ok(key);
            }
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
        assert_eq!(room_limit(&m, "fresh").await.unwrap(), 2);
        let a = claim_slot(&m, "n1", "fresh", "viewer", 2).await.unwrap();
        let b = claim_slot(&m, "n1", "fresh", "viewer", 2).await.unwrap();
        assert_ne!(a, b, "one slot per session, even with one identity");
        let full = claim_slot(&m, "n1", "fresh", "viewer", 2)
            .await
            .unwrap_err();
        assert_eq!(full.code, ErrorCode::RoomFull);
        // A released slot can be claimed again.
        m.remove(a);
        let mut again = None;
        for _ in 0..100 {
            if let Ok(k) = claim_slot(&m, "n1", "fresh", "other", 2).await {
                again = Some(k);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(again.is_some(), "the released slot is free again");
        assert_eq!(room_limit(&m, "no-such-room").await.unwrap(), 0);
    }
}
