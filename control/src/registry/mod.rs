//! The registry: the cluster's shared state, as keys bound to leases.
//!
//! [`Registry`] is the small key-value surface the cluster needs from etcd: leases with a TTL,
//! puts bound to a lease (refused once the lease is gone, which is what fences a node that lost
//! it), prefix listing with the revision it reflects, and watching from a revision; plus three
//! transactions: create-if-absent, a write that tells whether its key is alone under a prefix
//! (a room's first and last participant), and a write that holds only if nothing under a
//! prefix changed since a listing (places reserved in a limited room).
//! [`EtcdRegistry`] is the real one; [`MemoryRegistry`] keeps the same semantics in process for a
//! standalone node and for deterministic tests.

mod etcd;
mod memory;

pub use etcd::{EtcdAccess, EtcdRegistry};
pub use memory::MemoryRegistry;

use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// A lease: keys put under it disappear when it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

/// An etcd revision.
pub type Revision = i64;

/// One change under a watched prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum RegistryError {
    /// The registry cannot be reached (or timed out).
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The lease expired or was revoked; whoever held it must re-register.
    #[error("lease expired")]
    LeaseExpired,
    /// The revision to watch from was compacted away: list again.
    #[error("revision {0} was compacted")]
    Compacted(Revision),
    /// Anything else the registry refused.
    #[error("registry error: {0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// A listing: keys and values under a prefix, and the revision it reflects.
pub type Listing = (Vec<(String, Vec<u8>)>, Revision);

/// Watch events, in batches as the registry delivers them; an `Err` ends the watch.
pub type Watch = mpsc::Receiver<Result<Vec<WatchEvent>>>;

/// See the module documentation.
pub trait Registry: Send + Sync + 'static {
    /// Creates a lease with this time to live.
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId>> + Send;
    /// Renews a lease; `LeaseExpired` if it is gone.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;
    /// Ends a lease now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;
    /// Writes a key bound to a lease; `LeaseExpired` if the lease is gone.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Writes a key bound to a lease only if no such key exists (an etcd transaction):
    /// `Ok(false)` if it did. What makes a limit hold under concurrent claims.
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Puts `key` bound to a lease (`Some(value)`) or deletes it (`None`), and reports from the
    /// same transaction whether no key other than `key` existed under `prefix` at that moment.
    /// The write is made either way. What makes "the room's first participant" and "its last"
    /// the decision of exactly one node, however many race.
    fn write_alone(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        lease: LeaseId,
        prefix: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Puts `key` bound to a lease only if no key under `prefix` was created or changed after
    /// `revision` (a listing's): `Ok(false)` if one was. Lets a node decide from a sum over
    /// the prefix and write the result, knowing the sum still held when it wrote.
    fn put_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        prefix: &str,
        revision: Revision,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Writes a key bound to no lease: it stays until deleted (room configuration).
    fn put_persistent(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<()>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// Every key under a prefix, and the revision the listing reflects.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing>> + Send;
    /// Changes under a prefix from `from` on (inclusive).
    fn watch(&self, prefix: &str, from: Revision) -> impl Future<Output = Result<Watch>> + Send;
}
