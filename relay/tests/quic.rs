//! Real QUIC links on loopback: mutual TLS from the cluster CA (a certificate from another CA
//! is refused whether its holder is dialed or dials), frames, datagrams, and packets too large
//! for a datagram.

use bytes::Bytes;
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{Frame, KeyframeRequest};
use sfu_relay::certs::{Pem, create_ca, issue_node};
use sfu_relay::core::NodeId;
use sfu_relay::quic::{Identity, Link, LinkHandler, LinkManager};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug)]
enum Event {
    Up(NodeId),
    Down(NodeId),
    Frame(NodeId, Frame),
    Datagram(#[allow(dead_code)] NodeId, Bytes),
}

struct Recorder {
    tx: mpsc::UnboundedSender<Event>,
    links: Mutex<Vec<Link>>,
}

impl LinkHandler for Recorder {
    fn link_up(&self, link: Link) {
        let _ = self.tx.send(Event::Up(link.node.clone()));
        self.links.lock().unwrap().push(link);
    }
    fn link_down(&self, node: &NodeId) {
        let _ = self.tx.send(Event::Down(node.clone()));
    }
    fn frame(&self, from: &NodeId, frame: Frame) {
        let _ = self.tx.send(Event::Frame(from.clone(), frame));
    }
    fn datagram(&self, from: &NodeId, d: Bytes) {
        let _ = self.tx.send(Event::Datagram(from.clone(), d));
    }
}

fn identity(ca: &Pem, node: &str) -> Identity {
    let pem = issue_node(ca, node).unwrap();
    Identity::from_pem(
        node,
        ca.cert.as_bytes(),
        pem.cert.as_bytes(),
        pem.key.as_bytes(),
    )
    .unwrap()
}

fn start(
    id: Identity,
) -> (
    Arc<LinkManager>,
    Arc<Recorder>,
    mpsc::UnboundedReceiver<Event>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let rec = Arc::new(Recorder {
        tx,
        links: Mutex::new(Vec::new()),
    });
    let m = LinkManager::start("127.0.0.1:0".parse().unwrap(), &id, rec.clone()).unwrap();
    (m, rec, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .unwrap()
}

#[tokio::test]
async fn cluster_members_link_up_and_exchange_frames_and_media() {
    let ca = create_ca("test cluster").unwrap();
    let (a, rec_a, mut ev_a) = start(identity(&ca, "node-a"));
    let (b, rec_b, mut ev_b) = start(identity(&ca, "node-b"));
    let peers = vec![
        (NodeId::from("node-a"), a.local_addr().unwrap()),
        (NodeId::from("node-b"), b.local_addr().unwrap()),
    ];
    a.set_peers(&peers);
    b.set_peers(&peers);
    assert!(matches!(next(&mut ev_a).await, Event::Up(n) if &*n == "node-b"));
    assert!(matches!(next(&mut ev_b).await, Event::Up(n) if &*n == "node-a"));

    let link = rec_a.links.lock().unwrap()[0].clone();
    let frame = Frame {
        body: Some(Body::KeyframeRequest(KeyframeRequest {
            room: "r".into(),
            track: 9,
            layer: 1,
        })),
    };
    link.send_frame(frame.clone());
    match next(&mut ev_b).await {
        Event::Frame(from, f) => assert_eq!((&*from, f), ("node-a", frame)),
        e => panic!("{e:?}"),
    }
    let small = sfu_relay::wire::encode_datagram(5, &[0x80; 1000]);
    assert!(link.send_datagram(small.clone()));
    match next(&mut ev_b).await {
        Event::Datagram(_, d) => assert_eq!(d, small),
        e => panic!("{e:?}"),
    }
    // Larger than any datagram: goes on a stream and arrives whole.
    let big = sfu_relay::wire::encode_datagram(6, &vec![0x80; 20_000]);
    assert!(link.send_datagram(big.clone()));
    match next(&mut ev_b).await {
        Event::Datagram(_, d) => assert_eq!(d, big),
        e => panic!("{e:?}"),
    }
    // The other direction uses the same connection.
    let back = rec_b.links.lock().unwrap()[0].clone();
    assert_eq!(back.connection.remote_address(), a.local_addr().unwrap());

    // Closing one side takes the link down on the other.
    a.close();
    assert!(matches!(next(&mut ev_b).await, Event::Down(n) if &*n == "node-a"));
    b.close();
}

#[tokio::test]
async fn a_peer_whose_record_flaps_keeps_its_link() {
    let ca = create_ca("test cluster").unwrap();
    let (a, rec_a, mut ev_a) = start(identity(&ca, "node-a"));
    let (b, _rec_b, mut ev_b) = start(identity(&ca, "node-b"));
    let peers = vec![
        (NodeId::from("node-a"), a.local_addr().unwrap()),
        (NodeId::from("node-b"), b.local_addr().unwrap()),
    ];
    a.set_peers(&peers);
    b.set_peers(&peers);
    assert!(matches!(next(&mut ev_a).await, Event::Up(_)));
    assert!(matches!(next(&mut ev_b).await, Event::Up(_)));
    // node-b disappears from the registry and comes back (an etcd outage): the dialer keeps
    // the link it has rather than replacing it.
    a.set_peers(&peers[..1]);
    a.set_peers(&peers);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ev_a.try_recv().is_err(), "no link change on the dialer");
    assert!(ev_b.try_recv().is_err(), "no link change on the other side");
    let link = rec_a.links.lock().unwrap()[0].clone();
    let frame = Frame {
        body: Some(Body::KeyframeRequest(KeyframeRequest {
            room: "r".into(),
            track: 1,
            layer: 0,
        })),
    };
    link.send_frame(frame.clone());
    assert!(matches!(next(&mut ev_b).await, Event::Frame(_, f) if f == frame));
    a.close();
    b.close();
}

#[tokio::test]
async fn a_link_replaced_by_a_new_connection_goes_down_before_the_new_one_is_up() {
    let ca = create_ca("test cluster").unwrap();
    let (b, _rec_b, mut ev_b) = start(identity(&ca, "node-b"));
    let to_b = [(NodeId::from("node-b"), b.local_addr().unwrap())];
    let (a1, _rec_a1, mut ev_a1) = start(identity(&ca, "node-a"));
    a1.set_peers(&to_b);
    assert!(matches!(next(&mut ev_a1).await, Event::Up(_)));
    assert!(matches!(next(&mut ev_b).await, Event::Up(n) if &*n == "node-a"));
    // node-a again, from a new process, while the old link is still up: node-b drops what it
    // tied to the old link before it takes the new one.
    let (a2, _rec_a2, mut ev_a2) = start(identity(&ca, "node-a"));
    a2.set_peers(&to_b);
    assert!(matches!(next(&mut ev_a2).await, Event::Up(_)));
    assert!(matches!(next(&mut ev_b).await, Event::Down(n) if &*n == "node-a"));
    assert!(matches!(next(&mut ev_b).await, Event::Up(n) if &*n == "node-a"));
    a1.close();
    a2.close();
    b.close();
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_cannot_join() {
    let ca = create_ca("the cluster").unwrap();
    let rogue_ca = create_ca("someone else").unwrap();
    let (a, _rec_a, mut ev_a) = start(identity(&ca, "node-a"));
    // Trusts the cluster CA but holds a certificate from another one.
    let rogue_pem = issue_node(&rogue_ca, "node-z").unwrap();
    let rogue = Identity::from_pem(
        "node-z",
        ca.cert.as_bytes(),
        rogue_pem.cert.as_bytes(),
        rogue_pem.key.as_bytes(),
    )
    .unwrap();
    let (z, _rec_z, mut ev_z) = start(rogue);
    let peers = vec![
        (NodeId::from("node-a"), a.local_addr().unwrap()),
        (NodeId::from("node-z"), z.local_addr().unwrap()),
    ];
    a.set_peers(&peers);
    z.set_peers(&peers);
    // node-a dials node-z (it sorts first): node-z's certificate fails verification; node-a
    // keeps retrying and no link ever comes up on either side.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ev_a.try_recv().is_err(), "no link on the member");
    assert!(ev_z.try_recv().is_err(), "no link on the rogue");
    a.close();
    z.close();
}

#[tokio::test]
async fn a_member_refuses_a_node_with_a_foreign_certificate_that_dials_it() {
    let ca = create_ca("the cluster").unwrap();
    let rogue_ca = create_ca("someone else").unwrap();
    // The member sorts after both others, so it only accepts: each of them dials it.
    let (member, _rec_m, mut ev_m) = start(identity(&ca, "node-m"));
    // Trusts the cluster CA (so it accepts the member's certificate) but holds a certificate
    // from another CA: only the member's check of client certificates can keep it out.
    let rogue_pem = issue_node(&rogue_ca, "node-a").unwrap();
    let rogue = Identity::from_pem(
        "node-a",
        ca.cert.as_bytes(),
        rogue_pem.cert.as_bytes(),
        rogue_pem.key.as_bytes(),
    )
    .unwrap();
    let (z, _rec_z, mut ev_z) = start(rogue);
    // A genuine node dialing at the same time links up: the member does accept links.
    let (g, _rec_g, mut ev_g) = start(identity(&ca, "node-b"));
    let peers = vec![
        (NodeId::from("node-a"), z.local_addr().unwrap()),
        (NodeId::from("node-b"), g.local_addr().unwrap()),
        (NodeId::from("node-m"), member.local_addr().unwrap()),
    ];
    for m in [&member, &z, &g] {
        m.set_peers(&peers);
    }
    assert!(matches!(next(&mut ev_g).await, Event::Up(n) if &*n == "node-m"));
    assert!(matches!(next(&mut ev_m).await, Event::Up(n) if &*n == "node-b"));
    // The rogue keeps redialing (backoff up to 2 s) and is refused every time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        ev_m.try_recv().is_err(),
        "no link to the rogue on the member"
    );
    assert!(ev_z.try_recv().is_err(), "no link on the rogue");
    member.close();
    z.close();
    g.close();
}

#[tokio::test]
async fn a_member_cannot_pose_as_another_node() {
    let ca = create_ca("the cluster").unwrap();
    let (b, _rec_b, mut ev_b) = start(identity(&ca, "node-b"));
    // A genuine certificate for node-c, but it says it is node-a.
    let c_pem = issue_node(&ca, "node-c").unwrap();
    let impostor = Identity::from_pem(
        "node-a",
        ca.cert.as_bytes(),
        c_pem.cert.as_bytes(),
        c_pem.key.as_bytes(),
    )
    .unwrap();
    let (x, _rec_x, mut ev_x) = start(impostor);
    x.set_peers(&[(NodeId::from("node-b"), b.local_addr().unwrap())]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(ev_b.try_recv().is_err(), "the impostor was refused");
    assert!(ev_x.try_recv().is_err());
    b.close();
    x.close();
}

/// Both ends offer their media workers' ports: each link gets a direct path whose keys and
/// channels cross (what one seals, the other opens), the ports at the address the link
/// reached the peer at, and a `DirectConfirmed` frame switches the sender's worker over.
#[tokio::test]
async fn links_agree_on_a_direct_path_when_both_offer_it() {
    use sfu_proto::relay::DirectConfirmed;
    use sfu_relay::direct::{Opener, Sealer};
    let ca = create_ca("test cluster").unwrap();
    let start_direct = |node: &str, ports: Vec<u16>| {
        let (tx, rx) = mpsc::unbounded_channel();
        let rec = Arc::new(Recorder {
            tx,
            links: Mutex::new(Vec::new()),
        });
        let m = LinkManager::start_with_direct(
            "127.0.0.1:0".parse().unwrap(),
            &identity(&ca, node),
            rec.clone(),
            ports,
        )
        .unwrap();
        (m, rec, rx)
    };
    let (a, rec_a, mut ev_a) = start_direct("node-a", vec![4100, 4101]);
    let (b, rec_b, mut ev_b) = start_direct("node-b", vec![5100]);
    let (c, rec_c, mut ev_c) = start_direct("node-c", vec![]);
    let peers = vec![
        (NodeId::from("node-a"), a.local_addr().unwrap()),
        (NodeId::from("node-b"), b.local_addr().unwrap()),
        (NodeId::from("node-c"), c.local_addr().unwrap()),
    ];
    for m in [&a, &b, &c] {
        m.set_peers(&peers);
    }
    for _ in 0..2 {
        assert!(matches!(next(&mut ev_a).await, Event::Up(_)));
    }
    assert!(matches!(next(&mut ev_b).await, Event::Up(_)));
    assert!(matches!(next(&mut ev_c).await, Event::Up(_)));
    let link = |rec: &Recorder, to: &str| {
        rec.links
            .lock()
            .unwrap()
            .iter()
            .find(|l| &*l.node == to)
            .cloned()
            .unwrap()
    };
    let (ab, ba) = (link(&rec_a, "node-b"), link(&rec_b, "node-a"));
    let (pa, pb) = (ab.direct.clone().unwrap(), ba.direct.clone().unwrap());
    assert_eq!(pa.peer_addrs, vec!["127.0.0.1:5100".parse().unwrap()]);
    assert_eq!(
        pb.peer_addrs,
        vec![
            "127.0.0.1:4100".parse().unwrap(),
            "127.0.0.1:4101".parse().unwrap()
        ]
    );
    assert_eq!((pa.peer_channel, pb.peer_channel), (pb.channel, pa.channel));
    assert_ne!(pa.send_key, pa.recv_key, "a key per direction");
    // What A's worker 1 seals under B's channel, B opens with its receiving key.
    let mut sealed = bytes::BytesMut::new();
    Sealer::new(&pa.send_key, pa.peer_channel, 1).seal(b"records", &mut sealed);
    assert_eq!(sfu_relay::direct::channel_of(&sealed), Some(pb.channel));
    let (worker, plain) = Opener::new(&pb.recv_key).open(&mut sealed).unwrap();
    assert_eq!((worker, plain), (1, &b"records"[..]));
    // B confirms A's worker 1: A's path says so; the frame is the link's, not the handler's.
    assert!(!pa.is_confirmed(1));
    ba.send_frame(Frame {
        body: Some(Body::DirectConfirmed(DirectConfirmed { worker: 1 })),
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !pa.is_confirmed(1) {
        assert!(tokio::time::Instant::now() < deadline, "confirmation");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!pa.is_confirmed(0));
    assert!(ev_a.try_recv().is_err(), "no frame reached the handler");
    // C offers no ports: its links have no direct path, on either end.
    assert!(link(&rec_a, "node-c").direct.is_none());
    assert!(
        rec_c
            .links
            .lock()
            .unwrap()
            .iter()
            .all(|l| l.direct.is_none())
    );
}
