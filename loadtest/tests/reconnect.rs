//! Load-tester peers survive a dead node: a real etcd, two nodes and the control plane placing
//! every peer. The node hosting the room dies abruptly (its runtime is shut down: sockets close
//! without a goodbye and its lease is no longer kept alive, as after a crash); every peer
//! notices its lost signaling, is placed on the other node (naming the dead one in `avoid`,
//! which the registry still lists) and gets media flowing again there.

use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::Scenario;
use sfu_node::{Config, Server};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A node on a runtime of its own, so that it can die without ending this test's runtime.
fn start_node(config: Config) -> (Server, tokio::runtime::Runtime) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.block_on(Server::start(config)).expect("node starts");
        (server, rt)
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_a_dead_node_join_another_and_media_flows_again() {
    let etcd = sfu_control::testing::Etcd::start().expect("etcd starts");
    let dir = std::env::temp_dir().join(format!("sfu-lt-reconnect-{}", std::process::id()));
    let ids = ["rc1".to_owned(), "rc2".to_owned()];
    sfu_relay::certs::ensure_dev_certs(&dir, &ids).unwrap();
    let mut nodes = Vec::new();
    for id in &ids {
        let mut c = Config::loopback();
        c.cluster.node_id = id.clone();
        c.cluster.etcd = vec![etcd.endpoint.clone()];
        c.dev = true;
        c.cluster.certs_dir = Some(dir.clone());
        c.cluster.name = "reconnect".into();
        nodes.push(Some(start_node(c)));
    }
    let (_api, control) = sfu_control::testing::serve_control(&etcd.endpoint, "reconnect", 2)
        .await
        .unwrap();
    let url = |i: usize| {
        let (s, _) = nodes[i].as_ref().expect("running");
        format!("http://{}", s.http_addr)
    };
    let scenario = Scenario::from_toml(&format!(
        r#"
room_prefix = "survive"
publishers = 1
subscribers = 3
join_rate = 20
warmup_secs = 1
duration_secs = 14

[target]
kind = "sfu"
url = "{}"
control = "{control}"

[video]
bitrate_kbps = 200
fps = 15
keyframe_interval_secs = 1

[audio]
bitrate_kbps = 32
"#,
        url(0)
    ))
    .expect("the test scenario is valid");
    let watch = Watch::default();
    let running = tokio::spawn(async move { run(&scenario, &watch).await });

    // Once everyone is in (a meeting: all on one node), that node dies.
    let mut host = None;
    for _ in 0..200 {
        for (i, n) in nodes.iter().enumerate() {
            let (s, _) = n.as_ref().expect("running");
            if s.media.snapshot().await.participants == 4 {
                host = Some(i);
            }
        }
        if host.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let host = host.expect("the four peers join one node");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (server, rt) = nodes[host].take().expect("running");
    rt.shutdown_background();
    // Its media workers may outlive the runtime; nothing of it is used again.
    std::mem::forget(server);

    let report = running.await.unwrap().expect("the run completes");
    println!("{report}");
    assert_eq!(report.peers_failed, 0, "{report}");
    assert!(
        sfu_loadtest::peer::RECONNECTS.load(Ordering::Relaxed) >= 4,
        "every peer reconnected with media flowing: {report}"
    );
    let (survivor, _) = nodes[1 - host].as_ref().expect("running");
    assert_eq!(
        report.peers_per_server,
        [(format!("http://{}", survivor.http_addr), 4)],
        "everyone ends on the surviving node: {report}"
    );
    let last = report.series.last().expect("samples");
    assert!(
        last.peers_receiving == 3 && last.received_kbps > 0.0,
        "media flows at the end: {report}"
    );
    for (server, rt) in nodes.into_iter().flatten() {
        std::mem::forget(server);
        rt.shutdown_background();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
