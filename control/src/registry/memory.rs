//! The registry in process: what a standalone node uses, with etcd's semantics (leases that
//! expire, revisions, watches from a revision, compaction).

use super::{LeaseId, Listing, Registry, RegistryError, Result, Revision, Watch, WatchEvent};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Events kept for watches that start in the past; older ones count as compacted.
const HISTORY: usize = 10_000;

struct Entry {
    value: Vec<u8>,
    /// `None` for keys that stay until deleted.
    lease: Option<LeaseId>,
    /// The revision of its last write (etcd's mod_revision).
    modified: Revision,
}

#[derive(Default)]
struct State {
    revision: Revision,
    keys: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, (Duration, Instant)>,
    next_lease: i64,
    /// (revision, event), oldest first.
    history: VecDeque<(Revision, WatchEvent)>,
    watchers: Vec<(String, mpsc::Sender<Result<Vec<WatchEvent>>>)>,
}

impl State {
    /// Deletes the keys of leases whose time ran out (checked lazily, like etcd's lessor).
    fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(l, _)| *l)
            .collect();
        for l in dead {
            self.drop_lease(l);
        }
    }

    fn drop_lease(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
        let keys: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, e)| e.lease == Some(lease))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.keys.remove(&k);
            self.record(WatchEvent::Delete { key: k });
        }
    }

    /// Writes a key and records the change.
    fn set(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) {
        let modified = self.revision + 1;
        self.keys.insert(
            key.to_owned(),
            Entry {
                value: value.clone(),
                lease,
                modified,
            },
        );
        self.record(WatchEvent::Put {
            key: key.to_owned(),
            value,
        });
    }

    fn record(&mut self, event: WatchEvent) {
        self.revision += 1;
        let key = match &event {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key.clone(),
        };
        self.watchers.retain(|(prefix, tx)| {
            !key.starts_with(prefix.as_str()) || tx.try_send(Ok(vec![event.clone()])).is_ok()
        });
        self.history.push_back((self.revision, event));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }
}

/// See the module documentation. Clones share the same state.
#[derive(Clone, Default)]
pub struct MemoryRegistry {
    state: Arc<Mutex<State>>,
}

impl MemoryRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.expire();
        s
    }

    /// Forgets history up to the current revision, as `etcdctl compact` does.
    pub fn compact(&self) {
        self.lock().history.clear();
    }

    /// Ends a lease as if it had expired (for tests of fencing).
    pub fn expire_lease(&self, lease: LeaseId) {
        self.lock().drop_lease(lease);
    }
}

impl Registry for MemoryRegistry {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let mut s = self.lock();
        s.next_lease += 1;
        let id = LeaseId(s.next_lease);
        s.leases.insert(id, (ttl, Instant::now() + ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut s = self.lock();
        let (ttl, deadline) = s
            .leases
            .get_mut(&lease)
            .ok_or(RegistryError::LeaseExpired)?;
        *deadline = Instant::now() + *ttl;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.lock().drop_lease(lease);
        Ok(())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<()> {
        let mut s = self.lock();
        if !s.leases.contains_key(&lease) {
            return Err(RegistryError::LeaseExpired);
        }
        s.set(key, value, Some(lease));
        Ok(())
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<bool> {
        // Check and write under one lock, as etcd's transaction does.
        let mut s = self.lock();
        if !s.leases.contains_key(&lease) {
            return Err(RegistryError::LeaseExpired);
        }
        if s.keys.contains_key(key) {
            return Ok(false);
        }
        s.set(key, value, Some(lease));
        Ok(true)
    }

    async fn put_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        prefix: &str,
        revision: Revision,
    ) -> Result<bool> {
        let mut s = self.lock();
        if !s.leases.contains_key(&lease) {
            return Err(RegistryError::LeaseExpired);
        }
        let changed = s
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(_, e)| e.modified > revision);
        if changed {
            return Ok(false);
        }
        s.set(key, value, Some(lease));
        Ok(true)
    }

    async fn write_alone(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        lease: LeaseId,
        prefix: &str,
    ) -> Result<bool> {
        let mut s = self.lock();
        if value.is_some() && !s.leases.contains_key(&lease) {
            return Err(RegistryError::LeaseExpired);
        }
        let alone = !s
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .any(|(k, _)| k != key);
        match value {
            Some(value) => s.set(key, value, Some(lease)),
            None => {
                if s.keys.remove(key).is_some() {
                    s.record(WatchEvent::Delete {
                        key: key.to_owned(),
                    });
                }
            }
        }
        Ok(alone)
    }

    async fn put_persistent(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.lock().set(key, value, None);
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let mut s = self.lock();
        if s.keys.remove(key).is_some() {
            s.record(WatchEvent::Delete {
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let s = self.lock();
        let kvs = s
            .keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect();
        Ok((kvs, s.revision))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch> {
        let mut s = self.lock();
        let oldest = s.history.front().map_or(s.revision + 1, |(r, _)| *r);
        if from < oldest && from <= s.revision {
            return Err(RegistryError::Compacted(oldest - 1));
        }
        let (tx, rx) = mpsc::channel(1024);
        let past: Vec<WatchEvent> = s
            .history
            .iter()
            .filter(|(r, e)| {
                *r >= from
                    && match e {
                        WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => {
                            key.starts_with(prefix)
                        }
                    }
            })
            .map(|(_, e)| e.clone())
            .collect();
        if !past.is_empty() {
            let _ = tx.try_send(Ok(past));
        }
        s.watchers.push((prefix.to_owned(), tx));
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn keys_go_with_their_lease_and_writes_with_a_dead_lease_fail() {
        let r = MemoryRegistry::new();
        let lease = r.grant(Duration::from_secs(5)).await.unwrap();
        r.put("/a/1", b"x".to_vec(), lease).await.unwrap();
        let (_, rev) = r.list("/a/").await.unwrap();
        let mut w = r.watch("/a/", rev + 1).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        r.keep_alive(lease).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(r.list("/a/").await.unwrap().0.len(), 1, "kept alive");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            r.list("/a/").await.unwrap().0.is_empty(),
            "expired with its lease"
        );
        assert_eq!(
            w.recv().await.unwrap().unwrap(),
            vec![WatchEvent::Delete { key: "/a/1".into() }]
        );
        assert_eq!(
            r.put("/a/2", vec![], lease).await,
            Err(RegistryError::LeaseExpired)
        );
        assert_eq!(r.keep_alive(lease).await, Err(RegistryError::LeaseExpired));
    }

    #[tokio::test]
    async fn watches_replay_from_a_revision_until_compacted() {
        let r = MemoryRegistry::new();
        let lease = r.grant(Duration::from_secs(60)).await.unwrap();
        r.put("/p/a", b"1".to_vec(), lease).await.unwrap();
        let (_, rev) = r.list("/p/").await.unwrap();
        r.put("/p/b", b"2".to_vec(), lease).await.unwrap();
        r.put("/q/c", b"3".to_vec(), lease).await.unwrap();
        let mut w = r.watch("/p/", rev + 1).await.unwrap();
        assert_eq!(
            w.recv().await.unwrap().unwrap(),
            vec![WatchEvent::Put {
                key: "/p/b".into(),
                value: b"2".to_vec()
            }]
        );
        r.compact();
        assert!(matches!(
            r.watch("/p/", rev + 1).await,
            Err(RegistryError::Compacted(_))
        ));
    }
}
