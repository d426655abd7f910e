//! Federation between two independent clusters, each with its own etcd, mesh CA, federation
//! CA and API keys; one node of each is its federation gateway. Real Chromium publishes on
//! each side and decodes the other side's camera; unmapping on one side stops the media; the
//! trust and admission boundaries hold (a mesh certificate, an unknown CA, an unconfigured
//! name, a foreign token, an unmapped room are each refused); A's administrator stops B's
//! camera in A only. A is configured with B as its peer; B adds A at runtime through its
//! control plane (`FederationService.AddPeer`) and removes it later, which closes the link
//! and stops the media.
//!
//! - [`setup`]: the two clusters, and requests to their admin APIs and B's control plane;
//! - [`links`]: links that must be refused;
//! - [`checks`]: media flowing or stopped, and a federated track stopped on one side;
//! - [`stops`]: stopped federated tracks kept through a failover, and stopped through B's
//!   control plane;
//! - [`speakers`]: speaker ranking across the link;
//! - [`kill`]: a second test, A's active gateway process killed with SIGKILL;
//! - [`bad_input`]: a raw QUIC client with a peer's real certificate sending garbage.

#[path = "../common/mod.rs"]
mod common;

mod bad_input;
mod checks;
mod kill;
mod links;
mod setup;
mod speakers;
mod stops;

use checks::{expect_media, expect_media_but, media_stops};
use common::control::{authed, eventually, ws_join};
use common::{Browser, browser_lock};
use reqwest::Method;
use setup::{Control, Side, hook_about, identities, read, start_pair};
use sfu_proto::control as pb;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_share_a_mapped_room() {
    let _guard = browser_lock().await;
    let started = Instant::now();
    let (a, b, mut hooks) = start_pair().await;
    let fa = a.node.federation.clone().unwrap();
    let fb = b.node.federation.clone().unwrap();
    // B's control plane; B adds A as a peer through it (A has B in its configuration).
    let control = Control::start(&b).await;
    let a3 = a.standby.as_ref().unwrap();
    let f3 = a3.federation.clone().unwrap();
    let a_peer = pb::AddPeerRequest {
        name: "a.example".into(),
        addrs: vec![a.fed_addr.to_string(), f3.local_addr().unwrap().to_string()],
        ca_pem: std::fs::read_to_string(a.file("fed-ca.pem")).unwrap(),
    };
    let bad_peers = [
        ("a host name", vec!["a1:7443".into()], None, None),
        ("no PEM", a_peer.addrs.clone(), Some("not PEM"), None),
        ("a bad name", a_peer.addrs.clone(), None, Some("a example")),
    ];
    for (what, addrs, ca, name) in bad_peers {
        let bad = pb::AddPeerRequest {
            name: name.unwrap_or("a.example").into(),
            addrs,
            ca_pem: ca.map_or(a_peer.ca_pem.clone(), str::to_owned),
        };
        let e = control.add_peer(bad).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{what}: {e:?}");
    }
    let added = control.add_peer(a_peer.clone()).await.unwrap();
    assert_eq!((added.source.as_str(), added.addrs.len()), ("added", 2));
    let added_at = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || async {
            (fa.state.linked() == ["b.example"] && fb.state.linked() == ["a.example"]).then_some(())
        })
        .await
        .is_some(),
        "the gateways link"
    );
    println!(
        "B's gateway linked with A {:.1} s after AddPeer",
        added_at.elapsed().as_secs_f64()
    );
    let (_, peers) = a.call(Method::GET, "peers", None).await;
    assert_eq!(peers["peers"][0]["source"], "config", "{peers}");

    links::refused_links(&a, &b).await;

    // Each side's tokens admit to that side only.
    let refused = tokio_tungstenite::connect_async(format!(
        "ws://{}/rtc?access_token={}",
        a.node.http_addr,
        b.token("mallory", "joint")
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        Err(e) => panic!("a B token at A: expected 401, got {e}"),
        Ok(_) => panic!("A admitted a B token"),
    }

    // A room crosses only while both sides map it.
    a.map("joint", "b.example", "joint-with-a").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!a.active("joint").await, "one side's mapping is not enough");
    // B maps through its control plane's FederationService (A through its gateway's API).
    let unknown = control
        .map("joint-with-a", "c.example", "joint")
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
    let peers = eventually(Duration::from_secs(5), || async {
        let r = control
            .fed
            .clone()
            .list_peers(authed(&control.token, pb::ListFederationPeersRequest {}))
            .await
            .ok()?
            .into_inner();
        (r.peers.len() == 1 && r.peers[0].linked_gateways == ["b1"] && r.peers[0].source == "added")
            .then_some(r)
    })
    .await;
    assert!(
        peers.is_some(),
        "B's control plane lists a.example linked through b1"
    );
    control
        .map("joint-with-a", "a.example", "joint")
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            (a.active("joint").await && b.active("joint-with-a").await).then_some(())
        })
        .await
        .is_some(),
        "both sides see the mapping agreed"
    );

    // Chromium on each side publishes and decodes the other side's camera, both connected to
    // nodes that are not gateways: media crosses a relay link, the federation link and
    // another relay link.
    let mut browser = Browser::launch(&[
        ("alice", a.page("joint", "alice")),
        ("bob", b.page("joint-with-a", "bob")),
    ])
    .await;
    let both = ["alice", "bob"];
    let media_from = Instant::now();
    let last = expect_media(&mut browser, &both, 30.0, Duration::from_secs(60), [&a, &b]).await;
    println!(
        "federated media decoding on both sides {:.1} s after the pages opened",
        media_from.elapsed().as_secs_f64()
    );
    for p in both {
        assert!(
            last["pages"][p]["errors"].as_array().unwrap().is_empty(),
            "{last:#}"
        );
    }
    // Each side ranks the other side's speaker: audio levels cross the link both ways.
    speakers::each_side_ranks_the_other(&mut browser, "alice", "bob", "a.example/alice").await;

    // B's webhooks announce A's participant, namespaced.
    hook_about(&mut hooks, "participant_joined", "a.example/alice").await;

    // Metrics per peer: the link is up, one room is mapped, media arrives from the peer, and
    // the unconfigured name probed above was counted.
    let m = common::metrics(&a.url()).await;
    let metric = |m: &str, series: &str| common::metric(m, series);
    assert_eq!(
        metric(&m, r#"sfu_federation_linked{peer="b.example"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"sfu_federation_mapped_rooms{peer="b.example"}"#),
        1.0
    );
    let bytes = |m: &str| metric(m, r#"sfu_federation_bytes_in_total{peer="b.example"}"#);
    assert!(bytes(&m) > 10_000.0, "{m}");
    assert!(
        metric(
            &m,
            r#"sfu_federation_refused_total{reason="unconfigured_peer"}"#
        ) >= 1.0
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m2 = common::metrics(&a.url()).await;
    println!(
        "federation link B -> A carries {:.0} kbit/s of media for one camera and microphone",
        (bytes(&m2) - bytes(&m)) * 8.0 / 5.0 / 1000.0
    );

    // The other side's participants appear namespaced.
    let (_, joined) = ws_join(&b.plain_url(), &b.token("carol", "joint-with-a")).await;
    assert!(
        identities(&joined).contains(&"a.example/alice".to_owned()),
        "B sees A's alice as a.example/alice: {joined}"
    );
    // B's configuration gives A pseudonyms: A sees B's bob as b.example/guest-..., with
    // nothing that says bob.
    let (_, joined) = ws_join(&a.url(), &a.token("dave", "joint")).await;
    let from_b: Vec<&serde_json::Value> = joined["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["identity"]
                .as_str()
                .is_some_and(|i| i.starts_with("b.example/"))
        })
        .collect();
    assert_eq!(from_b.len(), 1, "{joined}");
    let pseudonym = from_b[0]["identity"].as_str().unwrap().to_owned();
    assert!(
        pseudonym.starts_with("b.example/guest-") && !from_b[0].to_string().contains("bob"),
        "A sees B's bob under a pseudonym only: {joined}"
    );
    println!("A sees B's bob as {pseudonym}");

    // A's administrator stops B's camera in A, and lets it through again.
    checks::stop_in_a_only(&mut browser, &a, &b).await;
    // B's control plane stops A's microphone in B and resumes it.
    stops::through_control_plane(&control, &b).await;

    // Unmapping on one side (B) stops media both ways within seconds.
    let listed = control
        .fed
        .clone()
        .list_mappings(authed(&control.token, pb::ListMappingsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.mappings.len(), 1);
    assert!(listed.mappings[0].active, "{listed:?}");
    control
        .fed
        .clone()
        .unmap_room(authed(
            &control.token,
            pb::UnmapRoomRequest {
                room: "joint-with-a".into(),
            },
        ))
        .await
        .unwrap();
    let stop_secs = media_stops(&mut browser, &both, Instant::now()).await;
    println!("media stopped within {stop_secs:.1} s of the unmap (2 s of stillness observed)");
    assert!(
        stop_secs < 5.0,
        "media stopped {stop_secs:.1} s after the unmap"
    );
    assert!(!a.active("joint").await, "A sees the room unmapped");
    a.unmap("joint").await;
    hook_about(&mut hooks, "participant_left", "a.example/alice").await;

    // Failover: mapped again, media flows; A's active gateway (a1) goes (its lease and its
    // federation endpoint, as when it stops or dies), the standby gateway (a3) takes over and
    // media resumes both ways.
    assert!(
        f3.state.linked().is_empty(),
        "the standby gateway holds no link"
    );
    a.map("joint", "b.example", "joint-with-a").await;
    control
        .map("joint-with-a", "a.example", "joint")
        .await
        .unwrap();
    expect_media(&mut browser, &both, 30.0, Duration::from_secs(60), [&a, &b]).await;
    // A stops B's microphone on a1; after the failover a3 keeps it stopped.
    let mic = stops::stop_microphone(&a).await;
    let failed = Instant::now();
    fa.close();
    a.node.membership.leave().await;
    let limit = Duration::from_secs(30);
    expect_media_but(&mut browser, &both, &["alice"], 30.0, limit, [&a, &b]).await;
    println!(
        "failover: both sides decoding 30 more frames {:.1} s after the active gateway went",
        failed.elapsed().as_secs_f64()
    );
    assert_eq!(f3.state.linked(), ["b.example"]);
    // The pseudonym is stable: the same through the second gateway.
    let (ps, _) = a.plain.membership.room("joint");
    assert!(
        ps.iter().any(|p| p.identity == pseudonym),
        "{pseudonym} after the failover: {ps:?}"
    );
    stops::still_stopped_after_failover(&mut browser, &a, &b, &mic).await;

    // B removes A as a peer: the link closes and media stops both ways.
    control.remove_peer("a.example").await.unwrap();
    let secs = media_stops(&mut browser, &both, Instant::now()).await;
    println!("media stopped within {secs:.1} s of RemovePeer (2 s of stillness observed)");
    assert!(fb.state.linked().is_empty(), "B's link to A is closed");
    let gone = control.remove_peer("a.example").await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    // A room of B alone, with one page on B's gateway: its media must keep flowing through
    // the bad input below.
    browser.close_page("alice").await;
    browser.close_page("bob").await;
    let on_gateway = b.page("local", "carol").replace(&b.plain_url(), &b.url());
    browser.open("carol", &on_gateway).await;
    browser.open("dave", &b.page("local", "dave")).await;

    // A peer asking for a room that is not mapped is refused. The probe speaks as A's gateway
    // (its certificate), which stops first; B adds A again.
    f3.close();
    control.add_peer(a_peer.clone()).await.unwrap();
    links::unmapped_room_refused(&a, &b).await;

    // Bad input from a raw client with A's certificate; B's local room keeps its media.
    let local = ["carol", "dave"];
    expect_media(
        &mut browser,
        &local,
        30.0,
        Duration::from_secs(60),
        [&a, &b],
    )
    .await;
    let bad_from = Instant::now();
    bad_input::run(bad_input::Target {
        addr: b.fed_addr,
        name: "b.example",
        ca: &read(&b.file("fed-ca.pem")),
        as_name: "a.example",
        cert: &read(&a.file("fed.pem")),
        key: &read(&a.file("fed.key")),
        http: b.url(),
    })
    .await;
    println!(
        "bad input cases took {:.1} s",
        bad_from.elapsed().as_secs_f64()
    );
    expect_media(
        &mut browser,
        &local,
        30.0,
        Duration::from_secs(20),
        [&a, &b],
    )
    .await;
    browser.stop().await;

    let Side {
        etcd: a_etcd,
        node: a1,
        plain: a2,
        standby,
        dir,
        ..
    } = a;
    for n in [a1, a2, b.node, b.plain].into_iter().chain(standby) {
        n.stop().await;
    }
    drop((a_etcd, b.etcd));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    println!(
        "federation test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
