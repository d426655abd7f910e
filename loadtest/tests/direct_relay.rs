//! Relayed media on the links' direct path (worker socket to worker socket, sealed with keys
//! of the link's TLS session), and the fall-back to QUIC datagrams where the path does not work.
//!
//! A real cluster (etcd, three in-process nodes of two media workers each, QUIC links): the
//! load tester's publisher on `da`, subscribers on `db` and on `dc`. `dc`'s workers listen on
//! 127.0.0.1 only while its relay endpoint is on 127.0.0.2, so the ports it offers are closed
//! at the address `da` reaches it at: `da`'s probes are never confirmed and its media for `dc`
//! stays in QUIC datagrams. Every subscriber must get audio and video either way.

mod common;

use common::{metric, node_config};
use sfu_control::testing::Etcd;
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::Scenario;
use sfu_node::Server;
use std::net::{IpAddr, Ipv4Addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_media_goes_worker_to_worker_where_it_can_and_in_quic_where_not() {
    let etcd = Etcd::start().expect("etcd starts");
    let certs = std::env::temp_dir().join(format!("sfu-direct-{}", std::process::id()));
    let ids = ["da".to_owned(), "db".to_owned(), "dc".to_owned()];
    sfu_relay::certs::ensure_dev_certs(&certs, &ids).unwrap();
    let a = Server::start(node_config("direct", "da", &etcd.endpoint, &certs))
        .await
        .expect("node da starts");
    let b = Server::start(node_config("direct", "db", &etcd.endpoint, &certs))
        .await
        .expect("node db starts");
    let mut c_config = node_config("direct", "dc", &etcd.endpoint, &certs);
    c_config.rtc.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // Advertised as bound (by default the advertised address is the media address's).
    let c_relay = std::net::UdpSocket::bind("127.0.0.2:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    c_config.cluster.relay_bind = c_relay;
    c_config.cluster.relay_advertise = Some(c_relay);
    let c = Server::start(c_config).await.expect("node dc starts");

    let scenario = Scenario::from_toml(&format!(
        r#"
room_prefix = "direct"
publishers = 1
subscribers = 4
join_rate = 10
warmup_secs = 3
duration_secs = 5

[target]
kind = "sfu"
url = "http://{a}"
subscriber_urls = ["http://{b}", "http://{c}"]

[video]
bitrate_kbps = 800

[audio]
bitrate_kbps = 32
"#,
        a = a.http_addr,
        b = b.http_addr,
        c = c.http_addr,
    ))
    .unwrap();
    let watch = Watch {
        pids: vec![std::process::id()],
        progress: false,
    };
    let report = run(&scenario, &watch).await.expect("the run completes");
    // Counters reach the metrics once a second.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let direct_out = metric(&a, "sfu_relay_datagrams_out_total{path=\"direct\"}");
    let quic_out = metric(&a, "sfu_relay_datagrams_out_total{path=\"quic\"}");
    let b_in = metric(&b, "sfu_relay_direct_datagrams_in_total");
    let c_in = metric(&c, "sfu_relay_direct_datagrams_in_total");
    let rejected = metric(&b, "sfu_dropped_packets_total{reason=\"direct_rejected\"}");
    println!(
        "{report}\nda sent {direct_out} direct and {quic_out} QUIC datagrams; \
         db opened {b_in} direct, dc {c_in}; db rejected {rejected}"
    );
    a.stop().await;
    b.stop().await;
    c.stop().await;
    let _ = std::fs::remove_dir_all(&certs);

    assert_eq!(report.peers_connected, 5, "{report}");
    assert_eq!(
        report.receivers_complete, 4,
        "subscribers on both nodes get audio and video: {report}"
    );
    // ~100 packets/s for ~8 s reach db; most of them directly once confirmed (within the
    // first fifth of a second of media).
    assert!(b_in > 300.0, "db received {b_in} direct datagrams");
    assert!(direct_out >= b_in, "da sent {direct_out}, db opened {b_in}");
    assert_eq!(c_in, 0.0, "dc's offered ports are closed where da sends");
    assert!(
        quic_out > 300.0,
        "dc's media went in QUIC datagrams: {quic_out}"
    );
    assert_eq!(rejected, 0.0, "every direct datagram opened");
}
