//! The membership task against the in-memory registry.

use super::*;
use crate::registry::MemoryRegistry;

fn node(id: &str) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        region: String::new(),
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
    f: impl Fn(&ClusterEvent) -> bool,
) -> ClusterEvent {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(30), events.recv())
            .await
            .expect("event in time")
            .unwrap();
        if f(&e) {
            return e;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn nodes_see_each_other_and_a_dead_nodes_keys_expire() {
    let reg = MemoryRegistry::new();
    let keys = Keys::new("t");
    let (tx_a, mut ev_a) = mpsc::unbounded_channel();
    let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx_a);
    a.set_json(keys.node("a"), &node("a"));
    let (tx_b, _ev_b) = mpsc::unbounded_channel();
    let b = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx_b);
    b.set_json(keys.node("b"), &node("b"));
    until(
        &mut ev_a,
        |e| matches!(e, ClusterEvent::Node(n) if n.id == "b"),
    )
    .await;
    assert!(a.registered());
    assert_eq!(a.nodes().len(), 2);
    // b stops renewing (as if killed): its keys go with its lease.
    drop(b);
    // Membership tasks outlive handles; revoke-free death is simulated by expiring.
    let lease_b = LeaseId(2);
    reg.expire_lease(lease_b);
    until(
        &mut ev_a,
        |e| matches!(e, ClusterEvent::NodeGone(id) if id == "b"),
    )
    .await;
    assert_eq!(a.nodes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_fences_then_everything_is_written_again() {
    let reg = MemoryRegistry::new();
    let keys = Keys::new("t");
    let (tx, mut ev) = mpsc::unbounded_channel();
    let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx);
    a.set_json(keys.node("a"), &node("a"));
    a.set_json(keys.track("r", "TR_1"), &"x");
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
    reg.expire_lease(LeaseId(1));
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(false))).await;
    assert!(!a.registered(), "no joins while fenced");
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
    let (kvs, _) = reg.list("/sfu/t/").await.unwrap();
    assert_eq!(kvs.len(), 2, "both keys written again under the new lease");
}

#[tokio::test(start_paused = true)]
async fn the_first_and_the_last_key_under_a_prefix_are_told_once() {
    let reg = MemoryRegistry::new();
    let keys = Keys::new("t");
    let (tx, mut ev) = mpsc::unbounded_channel();
    let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx);
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
    let (told_tx, mut told) = mpsc::unbounded_channel();
    let prefix = keys.participants_prefix("r");
    for sid in ["PA_1", "PA_2"] {
        let t = told_tx.clone();
        a.set_json_alone(keys.participant("r", sid), &sid, prefix.clone(), move |r| {
            let _ = t.send((sid, r));
        });
    }
    for sid in ["PA_1", "PA_2"] {
        let t = told_tx.clone();
        a.remove_alone(keys.participant("r", sid), prefix.clone(), move |r| {
            let _ = t.send((sid, r));
        });
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(told.recv().await.unwrap());
    }
    assert_eq!(
        got,
        [
            ("PA_1", Ok(true)),
            ("PA_2", Ok(false)),
            ("PA_1", Ok(false)),
            ("PA_2", Ok(true))
        ]
    );
    assert!(reg.list(&prefix).await.unwrap().0.is_empty());
    // Fenced: nobody can tell, and the key is written once registered again.
    reg.expire_lease(LeaseId(1));
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(false))).await;
    let t = told_tx.clone();
    a.set_json_alone(
        keys.participant("r", "PA_3"),
        &"PA_3",
        prefix.clone(),
        move |r| {
            let _ = t.send(("PA_3", r));
        },
    );
    assert!(told.recv().await.unwrap().1.is_err());
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
    assert_eq!(reg.list(&prefix).await.unwrap().0.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn compaction_leads_to_a_relist_with_the_differences() {
    let reg = MemoryRegistry::new();
    let keys = Keys::new("t");
    let (tx, mut ev) = mpsc::unbounded_channel();
    let a = Membership::start(reg.clone(), keys.clone(), Duration::from_secs(3), tx);
    a.set_json(keys.node("a"), &node("a"));
    until(&mut ev, |e| matches!(e, ClusterEvent::Registered(true))).await;
    reg.compact();
    let lease = reg.grant(Duration::from_secs(60)).await.unwrap();
    reg.put(
        &keys.node("z"),
        serde_json::to_vec(&node("z")).unwrap(),
        lease,
    )
    .await
    .unwrap();
    until(
        &mut ev,
        |e| matches!(e, ClusterEvent::Node(n) if n.id == "z"),
    )
    .await;
    assert_eq!(a.nodes().len(), 2);
}
