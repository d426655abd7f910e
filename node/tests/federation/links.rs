//! Links that must not come up, or must be refused what they ask: dialled by a link manager
//! outside both clusters with certificates of every wrong kind.

use crate::setup::{Side, read};
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{Frame, Subscribe};
use sfu_relay::NodeId;
use sfu_relay::certs::{Pem, create_ca, issue_node};
use sfu_relay::quic::{Identity, Link, LinkHandler, LinkManager};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;

/// A link manager outside both clusters, reporting what it is told.
struct Probe {
    up: mpsc::UnboundedSender<Link>,
    frames: mpsc::UnboundedSender<Frame>,
}

impl LinkHandler for Probe {
    fn link_up(&self, link: Link) {
        let _ = self.up.send(link);
    }
    fn link_down(&self, _: &NodeId) {}
    fn frame(&self, _: &NodeId, frame: Frame) {
        let _ = self.frames.send(frame);
    }
    fn datagram(&self, _: &NodeId, _: bytes::Bytes) {}
}

/// Dials `target` (named `target_name`) with `identity` (whose name must sort before it);
/// returns the link if one came up within 3 s, and the frames received on it.
async fn dial(
    identity: Identity,
    target_name: &str,
    target: SocketAddr,
) -> (
    Arc<LinkManager>,
    Option<Link>,
    mpsc::UnboundedReceiver<Frame>,
) {
    let (up, mut up_rx) = mpsc::unbounded_channel();
    let (frames, frames_rx) = mpsc::unbounded_channel();
    let m = LinkManager::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        Arc::new(Probe { up, frames }),
    )
    .unwrap();
    m.set_peers(&[(NodeId::from(target_name), target)]);
    let link = tokio::time::timeout(Duration::from_secs(3), up_rx.recv())
        .await
        .ok()
        .flatten();
    // A link the other side closes at once (an unconfigured name) came up here first: it
    // counts only if it stays up.
    let link = match link {
        Some(l) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            l.connection.close_reason().is_none().then_some(l)
        }
        None => None,
    };
    (m, link, frames_rx)
}

/// Whether `identity` links to `target`.
async fn links(identity: Identity, target_name: &str, target: SocketAddr) -> bool {
    let (m, link, _) = dial(identity, target_name, target).await;
    m.close();
    link.is_some()
}

/// What must not link: B's mesh certificate at A's federation endpoint and at A's mesh, a
/// certificate for B's name from an unknown CA, and a certificate of B's federation CA for
/// a name A has not configured.
pub async fn refused_links(a: &Side, b: &Side) {
    let alpn = sfu_node::federation::ALPN;
    let a_fed_ca = read(&a.file("fed-ca.pem"));
    let b_mesh = sfu_relay::certs::node_files(&b.file("mesh"), "b1");
    let (b_mesh_cert, b_mesh_key) = (read(&b_mesh.cert), read(&b_mesh.key));
    let fed_id = |cert: &[u8], key: &[u8]| {
        Identity::from_pem("0z", &a_fed_ca, cert, key)
            .unwrap()
            .with_alpn(alpn)
    };

    assert!(
        !links(fed_id(&b_mesh_cert, &b_mesh_key), "a.example", a.fed_addr).await,
        "a mesh certificate opened a federation link"
    );

    // B's mesh certificate, at A's mesh (relay) endpoint.
    let a_mesh_ca = read(&a.file("mesh/ca.pem"));
    let a1 = a.node.relay_addr.unwrap();
    let id = Identity::from_pem("0z", &a_mesh_ca, &b_mesh_cert, &b_mesh_key).unwrap();
    assert!(
        !links(id, "a1", a1).await,
        "B's mesh certificate joined A's mesh"
    );
    // The same dial with a certificate of A's mesh CA links: the refusals above are the
    // certificates', not the harness's.
    sfu_relay::certs::ensure_dev_certs(&a.file("mesh"), &["0z".to_owned()]).unwrap();
    let own = sfu_relay::certs::node_files(&a.file("mesh"), "0z");
    let id = Identity::from_pem("0z", &a_mesh_ca, &read(&own.cert), &read(&own.key)).unwrap();
    assert!(
        links(id, "a1", a1).await,
        "a certificate of A's mesh CA links to A's mesh"
    );

    // A certificate naming B's federation name from a CA nobody configured.
    let rogue_ca = create_ca("rogue").unwrap();
    let rogue: Pem = issue_node(&rogue_ca, "0z").unwrap();
    assert!(
        !links(
            fed_id(rogue.cert.as_bytes(), rogue.key.as_bytes()),
            "a.example",
            a.fed_addr
        )
        .await,
        "an unknown CA's certificate opened a federation link"
    );

    // B's federation CA vouches for a name A does not peer with.
    let b_ca = Pem {
        cert: String::from_utf8(read(&b.file("fed-ca.pem"))).unwrap(),
        key: String::from_utf8(read(&b.file("fed-ca.key"))).unwrap(),
    };
    let other = issue_node(&b_ca, "0z").unwrap();
    let refused = || {
        a.node
            .federation
            .as_ref()
            .unwrap()
            .stats()
            .links_refused
            .load(Ordering::Relaxed)
    };
    let before = refused();
    assert!(
        !links(
            fed_id(other.cert.as_bytes(), other.key.as_bytes()),
            "a.example",
            a.fed_addr
        )
        .await,
        "an unconfigured peer name kept a federation link"
    );
    // The probe dials again after each refusal: each is counted.
    assert!(refused() > before, "the refusal is counted");
}

/// A peer asking B for a track of a room B does not map is answered `Refused` and counted.
/// The probe speaks as A's gateway (its certificate): A's gateways must be stopped and A be
/// B's peer.
pub async fn unmapped_room_refused(a: &Side, b: &Side) {
    let id = Identity::from_pem(
        "a.example",
        &read(&b.file("fed-ca.pem")),
        &read(&a.file("fed.pem")),
        &read(&a.file("fed.key")),
    )
    .unwrap()
    .with_alpn(sfu_node::federation::ALPN);
    let (m, link, mut frames) = dial(id, "b.example", b.fed_addr).await;
    let link = link.expect("A's federation certificate links to B");
    link.send_frame(Frame {
        body: Some(Body::Subscribe(Subscribe {
            room: "joint-with-a".into(),
            track: 1,
            layers: vec![0],
            origin: String::new(),
        })),
    });
    let answer = tokio::time::timeout(Duration::from_secs(3), frames.recv())
        .await
        .expect("an answer within 3 s")
        .unwrap();
    match answer.body {
        Some(Body::Refused(r)) => assert_eq!(r.detail, "room not mapped"),
        other => panic!("expected Refused, got {other:?}"),
    }
    let fb = b.node.federation.as_ref().unwrap();
    assert!(fb.stats().subscriptions_refused.load(Ordering::Relaxed) >= 1);
    m.close();
}
