//! Places in limited rooms: the reservation side of the membership task (see
//! [`Membership::reserve`](super::Membership::reserve)). A node takes a joining session's
//! place from the block it holds in the room, reserves a new block in one etcd transaction
//! when none is spare, and gives spare places back after a while.

use super::Task;
use crate::records::ReservationRecord;
use crate::registry::{Registry, RegistryError};
use std::time::Duration;
use tokio::time::Instant;

/// Transactions tried before a reservation gives up (each fails only if another node
/// reserved meanwhile). Between tries a node waits a random while that doubles each time,
/// so that nodes which keep losing to each other spread out instead of colliding again
/// (seen with three nodes each taking single places near a room's limit: eight immediate
/// retries were sometimes all lost).
const RESERVE_ATTEMPTS: u32 = 12;
/// The first wait after a lost reservation race; it doubles up to [`RESERVE_BACKOFF_MAX`].
const RESERVE_BACKOFF: Duration = Duration::from_millis(2);
const RESERVE_BACKOFF_MAX: Duration = Duration::from_millis(128);
/// The most places reserved at once.
const MAX_BLOCK: u32 = 32;
/// Spare places not taken for this long go back to the room.
const SPARE_HOLD: Duration = Duration::from_secs(1);

/// Places a node holds in one limited room.
pub(super) struct Pool {
    /// Its reservation record's key.
    pub(super) key: String,
    pub(super) reserved: u32,
    pub(super) used: u32,
    pub(super) last_taken: Instant,
}

impl<R: Registry> Task<R> {
    /// See [`Membership::reserve`].
    pub(super) async fn reserve(
        &mut self,
        room: &str,
        node: &str,
        limit: u32,
    ) -> Result<bool, RegistryError> {
        let key = self.keys.reservation(room, node);
        let pool = self.pools.entry(room.to_owned()).or_insert_with(|| Pool {
            key: key.clone(),
            reserved: 0,
            used: 0,
            last_taken: Instant::now(),
        });
        if pool.reserved > pool.used {
            pool.used += 1;
            pool.last_taken = Instant::now();
            return Ok(true);
        }
        let Some(lease) = self.lease else {
            return Err(RegistryError::Unavailable("not registered".into()));
        };
        let prefix = self.keys.reservations_prefix(room);
        for attempt in 0..RESERVE_ATTEMPTS {
            if attempt > 0 {
                let ceiling = (RESERVE_BACKOFF * (1 << attempt.min(7))).min(RESERVE_BACKOFF_MAX);
                let wait = ceiling.mul_f64(rand::random_range(0.5..1.0));
                tokio::time::sleep(wait).await;
            }
            let (kvs, revision) = self.registry.list(&prefix).await?;
            let others: u32 = kvs
                .iter()
                .filter(|(k, _)| *k != key)
                .filter_map(|(_, v)| serde_json::from_slice::<ReservationRecord>(v).ok())
                .map(|r| r.reserved)
                .sum();
            let Some(pool) = self.pools.get_mut(room) else {
                return Ok(false);
            };
            let free = limit.saturating_sub(others).saturating_sub(pool.reserved);
            if free == 0 {
                return Ok(false);
            }
            // Large blocks while the room is far from full, single places near the end, so
            // that spare places other nodes hold rarely turn a join away.
            let block = (free / 8).clamp(1, MAX_BLOCK);
            let record = ReservationRecord {
                reserved: pool.reserved + block,
                used: pool.used + 1,
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            match self
                .registry
                .put_if_unchanged(&key, value.clone(), lease, &prefix, revision)
                .await
            {
                Ok(true) => {
                    pool.reserved = record.reserved;
                    pool.used = record.used;
                    pool.last_taken = Instant::now();
                    self.desired.insert(key.clone(), value);
                    self.dirty.remove(&key);
                    return Ok(true);
                }
                Ok(false) => continue,
                Err(RegistryError::LeaseExpired) => {
                    self.lose_lease();
                    return Err(RegistryError::LeaseExpired);
                }
                Err(e) => return Err(e),
            }
        }
        Err(RegistryError::Unavailable(
            "too many nodes reserving places in this room at once".into(),
        ))
    }

    /// See [`Membership::release`].
    pub(super) fn release(&mut self, room: &str) {
        if let Some(pool) = self.pools.get_mut(room) {
            pool.used = pool.used.saturating_sub(1);
        }
    }

    /// Places held spare for a while go back to their room (a lower reservation needs no
    /// transaction: it cannot break the limit). Also publishes how many are used.
    pub(super) fn return_spare_places(&mut self) {
        let now = Instant::now();
        let mut emptied = Vec::new();
        for (room, pool) in &mut self.pools {
            let idle = now.saturating_duration_since(pool.last_taken) >= SPARE_HOLD;
            if !idle || pool.reserved == pool.used {
                continue;
            }
            pool.reserved = pool.used;
            let key = pool.key.clone();
            if pool.reserved == 0 {
                self.desired.remove(&key);
                emptied.push(room.clone());
            } else {
                let record = ReservationRecord {
                    reserved: pool.reserved,
                    used: pool.used,
                };
                self.desired
                    .insert(key.clone(), serde_json::to_vec(&record).unwrap_or_default());
            }
            self.dirty.insert(key);
        }
        for room in emptied {
            self.pools.remove(&room);
        }
    }
}
