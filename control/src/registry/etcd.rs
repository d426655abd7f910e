//! The registry on etcd (v3 API, through `etcd-client`).

use super::{LeaseId, Listing, Registry, RegistryError, Result, Revision, Watch, WatchEvent};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// Every call gives up after this long, so a node notices an unreachable etcd quickly.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach an etcd cluster that is not open to anyone: TLS (its CA, and a client
/// certificate where etcd asks for one) and user authentication. All empty: plain `http://`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdAccess {
    /// CA certificate (PEM) that signed etcd's server certificate; turns TLS on.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// etcd user and password (etcd's `auth enable`).
    pub user: Option<String>,
    pub password: Option<String>,
}

impl EtcdAccess {
    /// The connection options these settings ask for; a clear error for settings that cannot
    /// work (a certificate without its key, a password without a user, `https://` without a
    /// CA, unreadable files).
    pub fn connect_options(&self, endpoints: &[String]) -> Result<ConnectOptions> {
        let bad = |why: String| RegistryError::Unavailable(format!("etcd access: {why}"));
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CALL_TIMEOUT)
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| bad(format!("reading {}: {e}", path.display())))
        };
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        match (&self.ca, https) {
            (Some(ca), _) => {
                let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
                match (&self.cert, &self.key) {
                    (Some(cert), Some(key)) => {
                        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
                    }
                    (None, None) => {}
                    _ => {
                        return Err(bad(
                            "a client certificate needs its key, and a key its certificate".into(),
                        ));
                    }
                }
                options = options.with_tls(tls);
            }
            (None, true) => {
                return Err(bad(
                    "https:// endpoints need the CA of etcd's certificate".into()
                ));
            }
            (None, false) if self.cert.is_some() || self.key.is_some() => {
                return Err(bad(
                    "a client certificate needs the CA of etcd's certificate too".into(),
                ));
            }
            (None, false) => {}
        }
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => options = options.with_user(user, password),
            (None, None) => {}
            _ => return Err(bad("a user needs a password, and a password a user".into())),
        }
        Ok(options)
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct EtcdRegistry {
    client: Client,
}

fn unavailable(e: etcd_client::Error) -> RegistryError {
    let text = e.to_string();
    if text.contains("requested lease not found") || text.contains("lease not found") {
        RegistryError::LeaseExpired
    } else if text.contains("compacted") {
        RegistryError::Compacted(0)
    } else {
        RegistryError::Unavailable(text)
    }
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or empty): every key after the prefix.
    vec![0]
}

impl EtcdRegistry {
    /// Connects to an open etcd (`http://host:port` endpoints). Returns at once: the
    /// connection is established lazily and re-established after failures.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        Self::connect_with(endpoints, &EtcdAccess::default()).await
    }

    /// Connects with TLS and/or a user. With a user, etcd is asked for a token at once, so an
    /// unreachable etcd or wrong password fails here.
    pub async fn connect_with(endpoints: &[String], access: &EtcdAccess) -> Result<Self> {
        let options = access.connect_options(endpoints)?;
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(unavailable)?;
        Ok(Self { client })
    }
}

impl Registry for EtcdRegistry {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        let r = self
            .client
            .clone()
            .lease_grant(ttl.as_secs().max(1) as i64, None)
            .await
            .map_err(unavailable)?;
        Ok(LeaseId(r.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let (mut keeper, mut stream) = self
            .client
            .clone()
            .lease_keep_alive(lease.0)
            .await
            .map_err(unavailable)?;
        keeper.keep_alive().await.map_err(unavailable)?;
        let answer = tokio::time::timeout(CALL_TIMEOUT, stream.message())
            .await
            .map_err(|_| RegistryError::Unavailable("keep-alive timed out".into()))?
            .map_err(unavailable)?;
        match answer {
            Some(r) if r.ttl() > 0 => Ok(()),
            // etcd answers a keep-alive of an unknown lease with TTL 0.
            _ => Err(RegistryError::LeaseExpired),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.client
            .clone()
            .lease_revoke(lease.0)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<()> {
        self.client
            .clone()
            .put(key, value, Some(PutOptions::new().with_lease(lease.0)))
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn create(&self, key: &str, value: Vec<u8>, lease: LeaseId) -> Result<bool> {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease.0)),
            )]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map(|r| r.succeeded())
            .map_err(unavailable)
    }

    async fn write_alone(
        &self,
        key: &str,
        value: Option<Vec<u8>>,
        lease: LeaseId,
        prefix: &str,
    ) -> Result<bool> {
        // No key in [prefix, key) and none in (key, end of prefix): a range compare on
        // create_revision holds for an empty range and fails for any existing key.
        let mut after = key.as_bytes().to_vec();
        after.push(0);
        let alone = vec![
            Compare::create_revision(prefix, CompareOp::Equal, 0).with_range(key),
            Compare::create_revision(after, CompareOp::Equal, 0).with_range(prefix_end(prefix)),
        ];
        let write = match value {
            Some(v) => TxnOp::put(key, v, Some(PutOptions::new().with_lease(lease.0))),
            None => TxnOp::delete(key, None),
        };
        let txn = Txn::new()
            .when(alone)
            .and_then(vec![write.clone()])
            .or_else(vec![write]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map(|r| r.succeeded())
            .map_err(unavailable)
    }

    async fn put_if_unchanged(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: LeaseId,
        prefix: &str,
        revision: Revision,
    ) -> Result<bool> {
        // Every key in the range was last modified at or before `revision` (a range compare
        // holds for an empty range; a key created since has a later mod_revision).
        let unchanged = Compare::mod_revision(prefix, CompareOp::Less, revision + 1)
            .with_range(prefix_end(prefix));
        let txn = Txn::new().when(vec![unchanged]).and_then(vec![TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease.0)),
        )]);
        self.client
            .clone()
            .txn(txn)
            .await
            .map(|r| r.succeeded())
            .map_err(unavailable)
    }

    async fn put_persistent(&self, key: &str, value: Vec<u8>) -> Result<()> {
        self.client
            .clone()
            .put(key, value, None)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .clone()
            .delete(key, None)
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let r = self
            .client
            .clone()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(unavailable)?;
        let revision = r.header().map_or(0, |h| h.revision());
        let kvs = r
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_owned(), kv.value().to_vec())))
            .collect();
        Ok((kvs, revision))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch> {
        let options = WatchOptions::new().with_prefix().with_start_revision(from);
        let mut stream = self
            .client
            .clone()
            .watch(prefix, Some(options))
            .await
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let batch = match stream.message().await {
                    Ok(Some(r)) if r.compact_revision() > 0 => {
                        Err(RegistryError::Compacted(r.compact_revision()))
                    }
                    Ok(Some(r)) if r.canceled() => Err(RegistryError::Other(format!(
                        "watch canceled: {}",
                        r.cancel_reason()
                    ))),
                    Ok(Some(r)) => Ok(r
                        .events()
                        .iter()
                        .filter_map(|e| {
                            let kv = e.kv()?;
                            let key = kv.key_str().ok()?.to_owned();
                            Some(match e.event_type() {
                                EventType::Put => WatchEvent::Put {
                                    key,
                                    value: kv.value().to_vec(),
                                },
                                EventType::Delete => WatchEvent::Delete { key },
                            })
                        })
                        .collect::<Vec<_>>()),
                    Ok(None) => Err(RegistryError::Unavailable("watch stream ended".into())),
                    Err(e) => Err(unavailable(e)),
                };
                let end = batch.is_err();
                if matches!(&batch, Ok(events) if events.is_empty()) {
                    continue;
                }
                if tx.send(batch).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }
}
