//! A relay link through a lossy, jittery path: 5 % of datagrams lost and each delayed by up
//! to 30 ms (so they reorder), both ways, between two nodes of a real cluster (etcd, QUIC):
//! its QUIC connection and its direct media path (worker to worker) each through a proxy.
//!
//! A publisher of the load tester sends to node `ia`; subscribers on node `ib` get its media
//! only over the impaired link. Their video must freeze less than 1 % of the time: the relay
//! hop repairs its losses (NACKs to the origin's cache) before the picture stalls. Freezes
//! are counted as [`sfu_loadtest::playout`] defines them (a frame is shown once it and every
//! frame before it are complete, a hole is given up after a second), so unrepaired loss would
//! freeze about once per lost packet. The proxy's counters check that the loss really
//! happened.
//!
//! The same test measures (`--nocapture` prints the report): `IMPAIR_LOSS` (0.05),
//! `IMPAIR_JITTER_MS` (30), `IMPAIR_SECS` (measured seconds, 15), `IMPAIR_SUBSCRIBERS` (4).

mod common;

use common::{metric, node_config};
use sfu_control::testing::Etcd;
use sfu_loadtest::impair::{ImpairProxy, Impairment};
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::Scenario;
use sfu_node::Server;
use std::time::Duration;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_behind_a_lossy_jittery_relay_link_barely_freeze() {
    let loss: f64 = env_or("IMPAIR_LOSS", 0.05);
    let jitter_ms: u64 = env_or("IMPAIR_JITTER_MS", 30);
    let secs: f64 = env_or("IMPAIR_SECS", 15.0);
    let subscribers: u32 = env_or("IMPAIR_SUBSCRIBERS", 4);
    if let Ok(filter) = std::env::var("SFU_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let etcd = Etcd::start().expect("etcd starts");
    let certs = std::env::temp_dir().join(format!("sfu-impaired-{}", std::process::id()));
    let ids = ["ia".to_owned(), "ib".to_owned()];
    sfu_relay::certs::ensure_dev_certs(&certs, &ids).unwrap();

    // `ia` sorts first, so it dials `ib`: at the address `ib` advertises, the proxy's on
    // 127.0.0.3. The link's media then goes to `ib`'s media worker port at that address too
    // (the direct path): a second proxy there, on the same port, forwards to the worker on
    // 127.0.0.1. Both are impaired alike; the direct one carries the media.
    let front = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let media_front = tokio::net::UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let media_port = media_front.local_addr().unwrap().port();
    // `Server::relay_addr` is the advertised address: `ib` listens on a port chosen here.
    let b_relay = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let mut b_config = node_config("impaired", "ib", &etcd.endpoint, &certs);
    b_config.cluster.relay_bind = b_relay;
    b_config.cluster.relay_advertise = Some(front.local_addr().unwrap());
    b_config.rtc.workers = 1;
    b_config.rtc.bind_ip = std::net::IpAddr::from([127, 0, 0, 1]);
    b_config.rtc.udp_port = media_port;
    let b = Server::start(b_config).await.expect("node ib starts");
    let impairment = |seed| Impairment {
        loss,
        jitter: Duration::from_millis(jitter_ms),
        seed,
    };
    let quic_proxy = ImpairProxy::with_socket(front, b_relay, impairment(12));
    let proxy = ImpairProxy::with_socket(
        media_front,
        ([127, 0, 0, 1], media_port).into(),
        impairment(13),
    );
    let a = Server::start(node_config("impaired", "ia", &etcd.endpoint, &certs))
        .await
        .expect("node ia starts");

    let scenario = Scenario::from_toml(&format!(
        r#"
room_prefix = "impaired"
publishers = 1
subscribers = {subscribers}
join_rate = 10
warmup_secs = 4
duration_secs = {secs}

[target]
kind = "sfu"
url = "http://{a}"
subscriber_urls = ["http://{b}"]

[video]
bitrate_kbps = 1500
keyframe_interval_secs = 3

[audio]
bitrate_kbps = 32
"#,
        a = a.http_addr,
        b = b.http_addr,
    ))
    .unwrap();
    let watch = Watch {
        pids: vec![std::process::id()],
        progress: false,
    };
    let before = proxy.counts();
    let report = run(&scenario, &watch).await.expect("the run completes");
    let counts = proxy.counts();
    println!("{report}");
    println!(
        "impairment: loss {loss}, jitter {jitter_ms} ms; proxy {counts:?}, dropped {:.2} %; \
         freeze ratio {:.3} %",
        100.0 * counts.loss(),
        report.freeze_ratio_percent
    );
    // The origin answers the link's NACKs from its cache (counted once a second).
    println!(
        "origin ia: {} packets NACKed, {} resent; ib: {} resent",
        a.metrics.nacks_received.get(),
        a.metrics.retransmitted.get(),
        b.metrics.retransmitted.get()
    );
    // Counters reach the metrics once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let direct = metric(&a, "sfu_relay_datagrams_out_total{path=\"direct\"}");
    println!(
        "ia sent {direct} datagrams on the direct path; the QUIC path's proxy {:?}",
        quic_proxy.counts()
    );
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&certs);

    assert_eq!(report.peers_connected as u32, subscribers + 1, "{report}");
    assert_eq!(
        report.receivers_complete as u32, subscribers,
        "every subscriber gets audio and video over the link: {report}"
    );
    // The link's direct path carried the media, and really lost about `loss` of it.
    let carried = counts.received - before.received;
    assert!(carried > 1_000, "{counts:?}");
    // The proxy also passed the path's probes (sealed, empty), sent until it was confirmed.
    assert!(
        direct + 16.0 >= carried as f64,
        "{direct} direct datagrams, {counts:?}"
    );
    assert!(
        (counts.loss() - loss).abs() <= loss * 0.3 + 0.002,
        "the proxy dropped {:.2} % of {} datagrams, not {:.0} %",
        100.0 * counts.loss(),
        counts.received,
        100.0 * loss
    );
    if jitter_ms > 0 {
        assert!(counts.reordered > 0, "the jitter reorders: {counts:?}");
    }
    assert!(
        report.freeze_ratio_percent < 1.0,
        "video frozen {:.3} % of the time behind the impaired link: {report}",
        report.freeze_ratio_percent
    );
}
