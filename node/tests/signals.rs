//! Draining a real `sfu-node` process by signal, as an init system or Kubernetes does.
//!
//! SIGTERM: the node stops admitting joins (503), says it is draining in the registry, tells
//! its participants to reconnect to another node (`migrate`), and exits once its last
//! participant has left, or at its drain deadline (`drain_timeout_secs` in its configuration
//! file) if some stay. A second SIGTERM, or SIGINT, during the drain stops it at once.

mod common;

use common::control::{Ws, next_of, ws_join};
use common::process::{NodeProcess, free_udp_port};
use sfu_control::registry::{EtcdRegistry, Registry};
use sfu_control::testing::Etcd;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Setup {
    etcd: Etcd,
    dir: PathBuf,
    certs: PathBuf,
}

impl Setup {
    fn new(nodes: &[&str]) -> Setup {
        let etcd = Etcd::start().expect("etcd starts");
        let dir = std::env::temp_dir().join(format!(
            "sfu-signals-{}-{}",
            std::process::id(),
            nodes.join("-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let certs = dir.join("certs");
        let ids: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        sfu_relay::certs::ensure_dev_certs(&certs, &ids).unwrap();
        Setup { etcd, dir, certs }
    }

    /// Starts node `id` with this drain deadline in its configuration file; waits until ready.
    async fn node(&self, id: &str, drain_timeout_secs: u64) -> NodeProcess {
        let config = self.dir.join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!("drain_timeout_secs = {drain_timeout_secs}\n"),
        )
        .unwrap();
        let node = NodeProcess::start(
            id,
            &self.etcd.endpoint,
            &self.certs,
            &self.dir,
            free_udp_port(),
            None,
            &["--config", &path(&config)],
        );
        node.wait_ready().await;
        node
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 temporary path").to_owned()
}

/// A participant joined on `node`.
async fn participant(node: &NodeProcess, identity: &str) -> Ws {
    let (ws, v) = ws_join(&node.url(), &common::token(identity, "drained", true, true)).await;
    assert_eq!(v["type"], "joined", "{v}");
    ws
}

/// SIGTERM; the participant is told to move to `target`, and new joins are refused.
async fn drain_by_signal(node: &NodeProcess, ws: &mut Ws, target: &NodeProcess) {
    node.signal("TERM");
    let m = next_of(ws, &["migrate"], Duration::from_secs(15)).await;
    assert_eq!(m["url"], target.url(), "sent to the other node: {m}");
    let token = common::token("late", "drained", true, true);
    let r = common::http()
        .get(format!("{}/rtc?access_token={token}", node.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "a draining node admits no one");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "draining", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_node_which_exits_once_empty_or_at_its_deadline() {
    let setup = Setup::new(&["target", "patient", "hasty"]);
    let target = setup.node("target", 60).await;
    let registry = EtcdRegistry::connect(std::slice::from_ref(&setup.etcd.endpoint))
        .await
        .unwrap();

    // A node with a long deadline waits for its participant, then exits when it leaves.
    let mut patient = setup.node("patient", 60).await;
    let mut ws = participant(&patient, "stays-a-while").await;
    drain_by_signal(&patient, &mut ws, &target).await;
    let draining = common::control::eventually(Duration::from_secs(10), || async {
        let (kvs, _) = registry.list("/sfu/it/nodes/patient").await.ok()?;
        let record: serde_json::Value = serde_json::from_slice(&kvs.first()?.1).ok()?;
        (record["state"] == "draining").then_some(())
    })
    .await;
    assert!(draining.is_some(), "the registry says it is draining");
    assert!(
        patient
            .exited_within(Duration::from_secs(2))
            .await
            .is_none(),
        "it waits while a participant is connected"
    );
    drop(ws);
    let status = patient
        .exited_within(Duration::from_secs(20))
        .await
        .expect("it exits once empty");
    assert!(status.success(), "{status}");
    assert!(patient.log_text().contains("drained: no participant left"));
    let (kvs, _) = registry.list("/sfu/it/nodes/patient").await.unwrap();
    assert!(kvs.is_empty(), "it left the registry");

    // A node with a 2 s deadline exits then, though its participant ignores the migration.
    let mut hasty = setup.node("hasty", 2).await;
    let mut ws = participant(&hasty, "ignores-it").await;
    drain_by_signal(&hasty, &mut ws, &target).await;
    let status = hasty
        .exited_within(Duration::from_secs(30))
        .await
        .expect("it exits at its deadline");
    assert!(status.success(), "{status}");
    assert!(
        hasty
            .log_text()
            .contains("drain deadline reached with participants still connected"),
        "{}",
        hasty.log_text()
    );
    drop(ws);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_during_a_drain_stops_the_node_at_once() {
    let setup = Setup::new(&["target", "twice", "interrupted"]);
    let target = setup.node("target", 60).await;
    for (id, second) in [("twice", "TERM"), ("interrupted", "INT")] {
        // A deadline far beyond the test's patience: only the second signal ends it.
        let mut node = setup.node(id, 600).await;
        let mut ws = participant(&node, "stays").await;
        drain_by_signal(&node, &mut ws, &target).await;
        node.signal(second);
        let status = node
            .exited_within(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("SIG{second} stops a draining node at once"));
        assert!(status.success(), "{status}");
        assert!(
            node.log_text().contains("stopping now"),
            "{}",
            node.log_text()
        );
        drop(ws);
    }
    let _ = std::fs::remove_dir_all(&setup.dir);
}
