//! Admission to rooms with a participant limit, held cluster-wide.
//!
//! A room created through the API with `max_participants = N` has N slots in the registry.
//! Joining claims a free slot in an etcd transaction (create-if-absent under this node's
//! lease), so however many joins race on however many nodes, at most N succeed. The slot goes
//! when the participant leaves, or with the node's lease if the node dies.

use crate::signaling::protocol::{ErrorCode, SignalError};
use rand::seq::SliceRandom;
use sfu_control::Membership;
use sfu_control::records::SlotRecord;
use std::collections::HashSet;

/// Claims a slot for `identity` in `room` if the room has a limit; returns the slot's key
/// (to release on leave), or `None` for rooms without a limit.
pub async fn admit(
    membership: &Membership,
    node: &str,
    room: &str,
    identity: &str,
) -> Result<Option<String>, SignalError> {
    let Some(config) = membership.room_config(room) else {
        return Ok(None);
    };
    if config.max_participants == 0 {
        return Ok(None);
    }
    let keys = membership.keys().clone();
    let prefix = keys.slots_prefix(room);
    let taken: Vec<(u32, SlotRecord)> = membership
        .list(&prefix)
        .into_iter()
        .filter_map(|(k, v)| {
            let n = k.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, serde_json::from_slice(&v).ok()?))
        })
        .collect();
    // The same identity joining again (a reload) replaces its old session: no new place.
    if taken.iter().any(|(_, s)| s.identity == identity) {
        return Ok(None);
    }
    let used: HashSet<u32> = taken.iter().map(|(n, _)| *n).collect();
    let mut free: Vec<u32> = (0..config.max_participants)
        .filter(|n| !used.contains(n))
        .collect();
    // Different joiners try different slots first, so concurrent claims rarely collide.
    free.shuffle(&mut rand::rng());
    let record = SlotRecord {
        identity: identity.to_owned(),
        node: node.to_owned(),
    };
    for n in free {
        let key = keys.slot(room, n);
        match membership.claim(key.clone(), &record).await {
            Ok(true) => return Ok(Some(key)),
            Ok(false) => continue,
            Err(e) => {
                return Err(SignalError::new(
                    ErrorCode::Internal,
                    format!("cannot reach the registry to admit: {e}"),
                ));
            }
        }
    }
    Err(SignalError::new(
        ErrorCode::RoomFull,
        format!(
            "room {room} is full ({} participants)",
            config.max_participants
        ),
    ))
}
