//! The `sfu-node` binary's command line: `token`, `certs`, and configuration errors.

use sfu_node::auth::Authenticator;
use sfu_relay::NodeId;
use sfu_relay::certs::node_files;
use sfu_relay::quic::{Identity, Link, LinkHandler, LinkManager};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[test]
fn token_subcommand_mints_a_token_the_node_accepts() {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu-node"))
        .args([
            "token",
            "--identity",
            "alice",
            "--room",
            "demo",
            "--no-publish",
            "--name",
            "Alice",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let keys: BTreeMap<String, String> = [("devkey".to_owned(), "secret".to_owned())].into();
    let grants = Authenticator::new(&keys).verify(token.trim()).unwrap();
    assert_eq!(grants.identity, "alice");
    assert_eq!(grants.name, "Alice");
    assert_eq!(grants.room.as_deref(), Some("demo"));
    assert!(!grants.can_publish && grants.can_subscribe && grants.room_join);
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let refused = |args: &[&str], env: &[(&str, &str)], reason: &str| {
        // Bounded: a node that wrongly starts would otherwise serve until killed.
        let out = Command::new("timeout")
            .args(["20", env!("CARGO_BIN_EXE_sfu-node")])
            .args(args)
            .env_remove("SFU_KEYS")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?} started: {err}");
        assert!(err.contains(reason), "{args:?} {env:?}: {err}");
    };
    refused(&["--keys", "nocolon"], &[], "key:secret");
    // The public development key never serves beyond this machine unless asked for.
    refused(&["--bind", "0.0.0.0:0"], &[], "no API keys");
    refused(&["--node-ip", "192.0.2.1"], &[], "no API keys");
    refused(
        &[
            "--etcd",
            "http://127.0.0.1:9",
            "--certs-dir",
            "/nonexistent",
        ],
        &[],
        "in a cluster",
    );
    // An empty setting is a mistake, not development mode; short secrets are refused.
    refused(&[], &[("SFU_KEYS", "")], "empty");
    refused(&["--keys", "prod:tooshort"], &[], "at least 32 bytes");
}

/// Reports links that come up, and keeps them (a dropped link's control stream ends, which
/// closes the link).
struct Ups(mpsc::UnboundedSender<String>, std::sync::Mutex<Vec<Link>>);

impl LinkHandler for Ups {
    fn link_up(&self, link: Link) {
        let _ = self.0.send(link.node.to_string());
        self.1.lock().unwrap().push(link);
    }
    fn link_down(&self, _: &NodeId) {}
    fn frame(&self, _: &NodeId, _: sfu_proto::relay::Frame) {}
    fn datagram(&self, _: &NodeId, _: bytes::Bytes) {}
}

fn certs(dir: &Path, nodes: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_sfu-node"))
        .arg("certs")
        .arg("--dir")
        .arg(dir)
        .args(["--nodes", nodes])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A link manager on loopback for `node` with the certificate files in `dir`, trusting the CA
/// in `ca_dir`.
fn linker(
    dir: &Path,
    ca_dir: &Path,
    node: &str,
) -> (Arc<LinkManager>, mpsc::UnboundedReceiver<String>) {
    let files = node_files(dir, node);
    let identity =
        Identity::from_files(node, &ca_dir.join("ca.pem"), &files.cert, &files.key).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let m = LinkManager::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        Arc::new(Ups(tx, Default::default())),
    )
    .unwrap();
    (m, rx)
}

async fn link_within(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a link within 10 s")
        .unwrap()
}

#[tokio::test]
async fn certs_subcommand_creates_a_ca_and_node_certificates_the_relay_accepts() {
    let base = std::env::temp_dir().join(format!("sfu-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let (cluster, other) = (base.join("cluster"), base.join("other"));
    certs(&cluster, "node-1,node-2");
    // Run again for another node: the CA is kept, existing certificates too.
    let ca = std::fs::read(cluster.join("ca.pem")).unwrap();
    let cert1 = std::fs::read(cluster.join("node-1.pem")).unwrap();
    certs(&cluster, "node-1,node-3");
    assert_eq!(std::fs::read(cluster.join("ca.pem")).unwrap(), ca);
    assert_eq!(std::fs::read(cluster.join("node-1.pem")).unwrap(), cert1);
    for f in ["ca.key", "node-1.key", "node-2.key", "node-3.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(cluster.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is private");
    }
    // Another run elsewhere makes another CA.
    certs(&other, "node-0");
    assert_ne!(std::fs::read(other.join("ca.pem")).unwrap(), ca);

    let (n1, mut up1) = linker(&cluster, &cluster, "node-1");
    let (n3, mut up3) = linker(&cluster, &cluster, "node-3");
    // node-0 trusts the cluster CA but its certificate comes from the other one.
    let (n0, mut up0) = linker(&other, &cluster, "node-0");
    let peers = vec![
        (NodeId::from("node-0"), n0.local_addr().unwrap()),
        (NodeId::from("node-1"), n1.local_addr().unwrap()),
        (NodeId::from("node-3"), n3.local_addr().unwrap()),
    ];
    for m in [&n0, &n1, &n3] {
        m.set_peers(&peers);
    }
    assert_eq!(link_within(&mut up1).await, "node-3");
    assert_eq!(link_within(&mut up3).await, "node-1");
    // node-0 dials both (it sorts first); both refuse it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        up0.try_recv().is_err(),
        "no link for the foreign certificate"
    );
    let (more1, more3) = (up1.try_recv(), up3.try_recv());
    assert!(
        more1.is_err() && more3.is_err(),
        "no other link: {more1:?} {more3:?}"
    );
    for m in [n0, n1, n3] {
        m.close();
    }
    let _ = std::fs::remove_dir_all(&base);
}
