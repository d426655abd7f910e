//! Bad input on a federation link from a client holding the peer's real federation
//! certificate: a raw QUIC client (quinn and rustls directly, not the node's link code) that
//! speaks the link's handshake and then floods subscriptions, sends garbage datagrams, a
//! malformed federation message and a malformed relay frame. Each is refused or bounded and
//! counted; the caller checks that local rooms kept their media.

use crate::common;
use bytes::BytesMut;
use sfu_proto::relay::frame::Body;
use sfu_proto::relay::{AudioLevel, AudioLevels, Frame, Hello, PROTOCOL_VERSION, Subscribe};
use sfu_relay::quinn;
use sfu_relay::wire;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where to dial and with which certificates (all PEM).
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub name: &'a str,
    pub ca: &'a [u8],
    pub as_name: &'a str,
    pub cert: &'a [u8],
    pub key: &'a [u8],
    /// The target gateway's HTTP base URL (metrics).
    pub http: String,
}

struct Raw {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl Raw {
    /// Connects and exchanges `Hello`s on the relay control stream, as a gateway does.
    async fn connect(t: &Target<'_>) -> Raw {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(t.ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let chain = CertificateDer::pem_slice_iter(t.cert)
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(t.key).unwrap())
            .unwrap();
        tls.alpn_protocols = vec![sfu_node::federation::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(1)));
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = endpoint
            .connect_with(config, t.addr, t.name)
            .unwrap()
            .await
            .expect("the peer's certificate is accepted");
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let hello = Frame {
            body: Some(Body::Hello(Hello {
                node_id: t.as_name.into(),
                protocol_version: PROTOCOL_VERSION,
                ..Default::default()
            })),
        };
        let mut out = BytesMut::new();
        wire::encode_frame(&hello, &mut out);
        send.write_all(&out).await.unwrap();
        let mut raw = Raw {
            endpoint,
            conn,
            send,
            recv,
            buf: BytesMut::new(),
        };
        match raw.next_frame(Duration::from_secs(5)).await {
            Some(Frame {
                body: Some(Body::Hello(_)),
            }) => raw,
            other => panic!("expected the gateway's Hello, got {other:?}"),
        }
    }

    /// The next frame on the relay control stream, if one comes within `limit`.
    async fn next_frame(&mut self, limit: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(f) = wire::decode_frame(&mut self.buf).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.recv.read(&mut chunk)).await {
                Ok(Ok(Some(n))) => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Waits for the gateway to close the connection; its error code.
    async fn closed_with(&self) -> Option<u64> {
        let reason = tokio::time::timeout(Duration::from_secs(5), self.conn.closed())
            .await
            .ok()?;
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}

async fn refused(t: &Target<'_>, reason: &str) -> f64 {
    let m = common::metrics(&t.http).await;
    common::metric(
        &m,
        &format!(r#"sfu_federation_refused_total{{reason="{reason}"}}"#),
    )
}

/// A flood of audio level frames: past the peer's burst they are dropped and counted
/// (`levels_flood`) before anything looks at them; the link stays up.
async fn levels_flood(t: &Target<'_>, raw: &mut Raw) {
    let before = refused(t, "levels_flood").await;
    let mut out = BytesMut::new();
    const SENT: u64 = 5000;
    for track in 0..SENT {
        let f = Frame {
            body: Some(Body::AudioLevels(AudioLevels {
                room: "joint-with-a".into(),
                levels: vec![AudioLevel {
                    track,
                    participant: "PA_mallory".into(),
                    level: 0,
                }],
            })),
        };
        wire::encode_frame(&f, &mut out);
    }
    raw.send.write_all(&out).await.unwrap();
    let counted = common::control::eventually(Duration::from_secs(5), || async {
        (refused(t, "levels_flood").await - before >= 4000.0).then_some(())
    })
    .await;
    assert!(counted.is_some(), "the flood is counted");
    // All read by now: the burst (200) and what the rate let through meanwhile passed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flood = refused(t, "levels_flood").await - before;
    println!("{SENT} audio level frames at once: {flood} dropped as a flood");
    assert!(
        (4000.0..=4800.0).contains(&flood),
        "bounded by the rate, past a burst of 200: {flood}"
    );
    assert!(
        raw.conn.close_reason().is_none(),
        "a flood of levels is not fatal"
    );
}

/// Runs every case against `t`; returns when all were refused or bounded as expected.
pub async fn run(t: Target<'_>) {
    // A flood of subscriptions: the first burst is answered (refused: the raw client maps no
    // room), the rest is dropped and counted; the link stays up.
    let mut raw = Raw::connect(&t).await;
    let flood_before = refused(&t, "flood").await;
    let mut out = BytesMut::new();
    const SENT: u64 = 5000;
    for track in 0..SENT {
        let f = Frame {
            body: Some(Body::Subscribe(Subscribe {
                room: "joint-with-a".into(),
                track,
                layers: vec![0],
                origin: String::new(),
            })),
        };
        wire::encode_frame(&f, &mut out);
    }
    raw.send.write_all(&out).await.unwrap();
    let mut answers = 0u64;
    while let Some(f) = raw.next_frame(Duration::from_secs(2)).await {
        if matches!(f.body, Some(Body::Refused(_))) {
            answers += 1;
        }
    }
    let flood = refused(&t, "flood").await - flood_before;
    println!("{SENT} subscriptions at once: {answers} answered, {flood} dropped as a flood");
    assert!(
        (1..=1500).contains(&answers),
        "answers are bounded by the rate: {answers}"
    );
    assert!(flood >= 3000.0, "the flood is counted: {flood}");
    assert!(
        raw.conn.close_reason().is_none(),
        "a flood is bounded, not fatal"
    );

    levels_flood(&t, &mut raw).await;

    // Garbage datagrams: dropped and counted; the link stays up.
    let before = refused(&t, "datagram").await;
    for i in 0..200u32 {
        let junk: Vec<u8> = (0..100).map(|j| (i * 7 + j) as u8 | 0x80).collect();
        raw.conn.send_datagram(junk.into()).unwrap();
    }
    assert!(
        common::control::eventually(Duration::from_secs(5), || async {
            (refused(&t, "datagram").await - before >= 100.0).then_some(())
        })
        .await
        .is_some(),
        "garbage datagrams are counted"
    );
    assert!(
        raw.conn.close_reason().is_none(),
        "garbage datagrams are not fatal"
    );

    // A malformed message on the federation's own stream (which this side, sorting first,
    // opens): the link is closed (code 6) and it is counted.
    let before = refused(&t, "malformed_message").await;
    let (mut send, _recv) = raw.conn.open_bi().await.unwrap();
    send.write_all(&9u32.to_be_bytes()).await.unwrap();
    send.write_all(b"not json!").await.unwrap();
    assert_eq!(
        raw.closed_with().await,
        Some(6),
        "a malformed message closes the link"
    );
    assert_eq!(refused(&t, "malformed_message").await - before, 1.0);
    raw.endpoint.close(0u32.into(), b"");

    // A malformed relay frame (a length, then bytes that are no Frame): closed (code 4),
    // counted.
    let mut raw = Raw::connect(&t).await;
    let before = refused(&t, "malformed_frame").await;
    raw.send
        .write_all(&[5, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert_eq!(
        raw.closed_with().await,
        Some(4),
        "a malformed frame closes the link"
    );
    assert!(
        common::control::eventually(Duration::from_secs(3), || async {
            (refused(&t, "malformed_frame").await - before == 1.0).then_some(())
        })
        .await
        .is_some(),
        "the malformed frame is counted"
    );
    raw.endpoint.close(0u32.into(), b"");
}
