//! The registry against a real etcd: leases, fencing, watches, the first/last transaction,
//! and two nodes' membership.

use sfu_control::records::{Keys, NodeRecord};
use sfu_control::registry::{EtcdRegistry, Registry, RegistryError, WatchEvent};
use sfu_control::testing::Etcd;
use sfu_control::{ClusterEvent, Membership};
use std::time::Duration;
use tokio::sync::mpsc;

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        region: "test".into(),
        http_url: format!("http://{id}"),
        relay_addr: None,
        state: Default::default(),
        capacity: 0,
        limits: Default::default(),
        load: Default::default(),
        updated_ms: 0,
    }
}

async fn until(
    events: &mut mpsc::UnboundedReceiver<ClusterEvent>,
    within: Duration,
    f: impl Fn(&ClusterEvent) -> bool,
) {
    tokio::time::timeout(within, async {
        loop {
            if f(&events.recv().await.unwrap()) {
                return;
            }
        }
    })
    .await
    .expect("the event came in time");
}

#[tokio::test]
async fn etcd_registry_semantics() {
    let etcd = Etcd::start().unwrap();
    let r = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lease = r.grant(Duration::from_secs(2)).await.unwrap();
    r.put("/t/a", b"1".to_vec(), lease).await.unwrap();
    let (kvs, rev) = r.list("/t/").await.unwrap();
    assert_eq!(kvs, vec![("/t/a".to_owned(), b"1".to_vec())]);
    let mut w = r.watch("/t/", rev + 1).await.unwrap();
    r.put("/t/b", b"2".to_vec(), lease).await.unwrap();
    let got = w.recv().await.unwrap().unwrap();
    assert_eq!(
        got,
        vec![WatchEvent::Put {
            key: "/t/b".into(),
            value: b"2".to_vec()
        }]
    );
    r.keep_alive(lease).await.unwrap();
    // Without keep-alives the lease expires and takes both keys.
    let mut deleted = 0;
    while deleted < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), w.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        deleted += batch
            .iter()
            .filter(|e| matches!(e, WatchEvent::Delete { .. }))
            .count();
    }
    assert_eq!(r.keep_alive(lease).await, Err(RegistryError::LeaseExpired));
    assert_eq!(
        r.put("/t/c", vec![], lease).await,
        Err(RegistryError::LeaseExpired),
        "fenced"
    );
}

#[tokio::test]
async fn memberships_on_etcd_survive_an_outage() {
    let etcd = Etcd::start().unwrap();
    let keys = Keys::new("outage");
    let (tx_a, mut ev_a) = mpsc::unbounded_channel();
    let a = Membership::start(
        EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .unwrap(),
        keys.clone(),
        Duration::from_secs(3),
        tx_a,
    );
    a.set_json(keys.node("a"), &node("a"));
    let (tx_b, mut ev_b) = mpsc::unbounded_channel();
    let b = Membership::start(
        EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
            .await
            .unwrap(),
        keys.clone(),
        Duration::from_secs(3),
        tx_b,
    );
    b.set_json(keys.node("b"), &node("b"));
    until(
        &mut ev_a,
        Duration::from_secs(10),
        |e| matches!(e, ClusterEvent::Node(n) if n.id == "b"),
    )
    .await;
    until(&mut ev_b, Duration::from_secs(10), |e| {
        matches!(e, ClusterEvent::Registered(true))
    })
    .await;

    // etcd freezes for longer than the lease TTL: both nodes fence themselves.
    etcd.pause();
    until(&mut ev_a, Duration::from_secs(15), |e| {
        matches!(e, ClusterEvent::Registered(false))
    })
    .await;
    assert!(!a.registered());
    // It comes back: both re-register under new leases and see each other again.
    etcd.resume();
    until(&mut ev_a, Duration::from_secs(20), |e| {
        matches!(e, ClusterEvent::Registered(true))
    })
    .await;
    until(&mut ev_b, Duration::from_secs(20), |e| {
        matches!(e, ClusterEvent::Registered(true))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<String> = a.nodes().into_iter().map(|n| n.id).collect();
    assert!(
        ids.contains(&"a".to_owned()) && ids.contains(&"b".to_owned()),
        "{ids:?}"
    );

    // A node that leaves revokes its lease: its keys go at once.
    b.leave().await;
    until(
        &mut ev_a,
        Duration::from_secs(5),
        |e| matches!(e, ClusterEvent::NodeGone(id) if id == "b"),
    )
    .await;
}

#[tokio::test]
async fn write_alone_tells_the_first_and_the_last_key_under_a_prefix() {
    let etcd = Etcd::start().unwrap();
    let r = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lease = r.grant(Duration::from_secs(30)).await.unwrap();
    let p = "/t/room/participants/";
    // Keys just outside the prefix do not count.
    r.put("/t/room/participants", b"x".to_vec(), lease)
        .await
        .unwrap();
    r.put("/t/room/participants0", b"x".to_vec(), lease)
        .await
        .unwrap();
    let put = |k: &'static str| r.write_alone(k, Some(b"1".to_vec()), lease, p);
    let del = |k: &'static str| r.write_alone(k, None, lease, p);
    assert_eq!(put("/t/room/participants/b").await, Ok(true), "the first");
    assert_eq!(
        put("/t/room/participants/b").await,
        Ok(true),
        "rewritten, still alone"
    );
    assert_eq!(
        put("/t/room/participants/a").await,
        Ok(false),
        "one before it"
    );
    assert_eq!(
        put("/t/room/participants/c").await,
        Ok(false),
        "one after it"
    );
    assert_eq!(del("/t/room/participants/b").await, Ok(false));
    assert_eq!(del("/t/room/participants/a").await, Ok(false));
    assert_eq!(del("/t/room/participants/c").await, Ok(true), "the last");
    let (kvs, _) = r.list(p).await.unwrap();
    assert!(kvs.is_empty(), "the writes were made either way: {kvs:?}");
    // Racing writers: exactly one is first.
    let firsts = futures_first(&r, lease, p).await;
    assert_eq!(firsts, 1);
    r.revoke(lease).await.unwrap();
    assert_eq!(
        put("/t/room/participants/z").await,
        Err(RegistryError::LeaseExpired),
        "fenced"
    );
}

/// Ten keys written at once under an empty prefix: how many were told they were alone.
async fn futures_first(r: &EtcdRegistry, lease: sfu_control::registry::LeaseId, p: &str) -> usize {
    let mut tasks = Vec::new();
    for i in 0..10 {
        let (r, p) = (r.clone(), p.to_owned());
        tasks.push(tokio::spawn(async move {
            r.write_alone(&format!("{p}{i}"), Some(vec![]), lease, &p)
                .await
                .unwrap()
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        firsts += t.await.unwrap() as usize;
    }
    firsts
}

#[tokio::test]
async fn a_write_holds_only_if_nothing_under_its_prefix_changed_since_the_listing() {
    let etcd = Etcd::start().unwrap();
    let r = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let lease = r.grant(Duration::from_secs(30)).await.unwrap();
    let (_, rev) = r.list("/res/").await.unwrap();
    assert!(
        r.put_if_unchanged("/res/a", b"1".to_vec(), lease, "/res/", rev)
            .await
            .unwrap(),
        "an empty prefix is unchanged"
    );
    // Decided from a listing older than a's write: refused.
    assert!(
        !r.put_if_unchanged("/res/b", b"1".to_vec(), lease, "/res/", rev)
            .await
            .unwrap()
    );
    let (_, rev) = r.list("/res/").await.unwrap();
    r.put("/other/x", b"1".to_vec(), lease).await.unwrap();
    assert!(
        r.put_if_unchanged("/res/b", b"1".to_vec(), lease, "/res/", rev)
            .await
            .unwrap(),
        "writes outside the prefix do not matter"
    );
}

#[tokio::test]
async fn nodes_racing_for_a_limited_rooms_places_never_exceed_the_limit_on_etcd() {
    let etcd = Etcd::start().unwrap();
    let keys = Keys::new("places");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let (tx, mut ev) = mpsc::unbounded_channel();
        let m = Membership::start(
            EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
                .await
                .unwrap(),
            keys.clone(),
            Duration::from_secs(3),
            tx,
        );
        m.set_json(keys.node(&format!("n{i}")), &node(&format!("n{i}")));
        until(&mut ev, Duration::from_secs(10), |e| {
            matches!(e, ClusterEvent::Registered(true))
        })
        .await;
        nodes.push(m);
    }
    // 90 joins at once over three nodes for 40 places: each node reserves blocks in
    // transactions that fail when another node reserved meanwhile.
    let joins = (0..90).map(|i| {
        let m = nodes[i % 3].clone();
        let node = format!("n{}", i % 3);
        tokio::spawn(async move { m.reserve("big", &node, 40).await })
    });
    let mut results = Vec::new();
    for j in joins.collect::<Vec<_>>() {
        results.push(j.await);
    }
    let taken = results.iter().filter(|r| matches!(r, Ok(Ok(true)))).count();
    let errors: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let r = EtcdRegistry::connect(std::slice::from_ref(&etcd.endpoint))
        .await
        .unwrap();
    let (kvs, _) = r.list(&keys.reservations_prefix("big")).await.unwrap();
    let reserved: u32 = kvs
        .iter()
        .map(|(_, v)| {
            serde_json::from_slice::<sfu_control::records::ReservationRecord>(v)
                .unwrap()
                .reserved
        })
        .sum();
    assert!(reserved <= 40, "at most the limit is reserved: {reserved}");
    assert!(taken <= reserved as usize, "{taken} taken of {reserved}");
    assert!(
        taken >= 36,
        "nearly every place is used at once (the rest are spare on a node): {taken}"
    );
}
