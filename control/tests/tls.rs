//! TLS where the control plane leaves the machine, against a real etcd serving TLS only to
//! clients with certificates and then with its users enabled, and the real `sfuctl` binary
//! calling the gRPC API over TLS.

use sfu_control::registry::{EtcdAccess, EtcdRegistry, Registry};
use sfu_control::testing::{Etcd, EtcdTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create() -> Pki {
        let dir = std::env::temp_dir().join(format!("sfu-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = sfu_relay::certs::create_ca("test CA").unwrap();
        std::fs::write(dir.join("ca.pem"), &ca.cert).unwrap();
        for name in ["127.0.0.1", "client"] {
            let pem = sfu_relay::certs::issue_node(&ca, name).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), pem.cert).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), pem.key).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn access(pki: &Pki, user: Option<(&str, &str)>) -> EtcdAccess {
    EtcdAccess {
        ca: Some(pki.path("ca.pem")),
        cert: Some(pki.path("client.pem")),
        key: Some(pki.path("client.key")),
        user: user.map(|u| u.0.to_owned()),
        password: user.map(|u| u.1.to_owned()),
    }
}

async fn round_trip(registry: &EtcdRegistry, key: &str) -> Result<Vec<u8>, String> {
    registry
        .put_persistent(key, b"v".to_vec())
        .await
        .map_err(|e| e.to_string())?;
    let (kvs, _) = registry.list(key).await.map_err(|e| e.to_string())?;
    Ok(kvs.into_iter().map(|(_, v)| v).next().unwrap_or_default())
}

fn sfuctl(url: &str, ca: Option<&Path>) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sfuctl"));
    c.args(["--url", url, "--json", "rooms", "list"]);
    if let Some(ca) = ca {
        c.arg("--ca").arg(ca);
    }
    c.env_remove("SFU_TLS_CA").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_mutual_tls_with_users_and_grpc_over_tls() {
    let pki = Pki::create();
    let etcd = Etcd::start_tls(&EtcdTls {
        cert: &pki.path("127.0.0.1.pem"),
        key: &pki.path("127.0.0.1.key"),
        client_ca: &pki.path("ca.pem"),
    })
    .unwrap();
    let endpoints = std::slice::from_ref(&etcd.endpoint);
    assert!(etcd.endpoint.starts_with("https://"));

    // Settings that cannot work are refused before any connection.
    let e = EtcdRegistry::connect_with(endpoints, &EtcdAccess::default())
        .await
        .err()
        .expect("https without a CA is refused");
    assert!(e.to_string().contains("CA"), "{e}");
    let half = EtcdAccess {
        key: None,
        ..access(&pki, None)
    };
    let e = EtcdRegistry::connect_with(endpoints, &half)
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("needs its key"), "{e}");

    // The server's CA alone is not enough: etcd asks for a client certificate.
    let anonymous = EtcdAccess {
        cert: None,
        key: None,
        ..access(&pki, None)
    };
    let r = EtcdRegistry::connect_with(endpoints, &anonymous)
        .await
        .unwrap();
    assert!(round_trip(&r, "/tls/anon").await.is_err());

    // With it, the registry works.
    let r = EtcdRegistry::connect_with(endpoints, &access(&pki, None))
        .await
        .unwrap();
    assert_eq!(round_trip(&r, "/tls/a").await.unwrap(), b"v");

    // etcd's users on: a root user, then auth enabled.
    let options = access(&pki, None).connect_options(endpoints).unwrap();
    let mut admin = etcd_client::Client::connect(endpoints, Some(options))
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    // Without a user (the client certificate's name, "client", is no user) writes are denied;
    // a wrong password is refused at once; the right one works.
    let r = EtcdRegistry::connect_with(endpoints, &access(&pki, None))
        .await
        .unwrap();
    assert!(round_trip(&r, "/tls/b").await.is_err());
    assert!(
        EtcdRegistry::connect_with(endpoints, &access(&pki, Some(("root", "wrong"))))
            .await
            .is_err()
    );
    let secured = access(&pki, Some(("root", "root-pw")));
    let r = EtcdRegistry::connect_with(endpoints, &secured)
        .await
        .unwrap();
    assert_eq!(round_trip(&r, "/tls/c").await.unwrap(), b"v");

    // The control plane on that etcd, serving gRPC over TLS.
    let keys = sfu_control::keys::dev_keys();
    let control = sfu_control::service::connect_with(endpoints, &secured, None, "tls", &keys)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = sfu_control::http_server::ServeOptions {
        tls: Some(
            sfu_control::tls::server_config(&pki.path("127.0.0.1.pem"), &pki.path("127.0.0.1.key"))
                .unwrap(),
        ),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(sfu_control::service::serve_with(
        control,
        listener,
        options,
        async {
            let _ = stopped.await;
        },
    ));
    let url = format!("https://127.0.0.1:{port}");
    let (ca, url2) = (pki.path("ca.pem"), url.clone());
    let out = tokio::task::spawn_blocking(move || sfuctl(&url2, Some(&ca)))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "sfuctl over TLS with the CA: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rooms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rooms.is_array() || rooms.is_object(), "{rooms}");

    // Without the CA the certificate is not trusted; plain HTTP gets no answer either.
    let url2 = url.clone();
    let out = tokio::task::spawn_blocking(move || sfuctl(&url2, None))
        .await
        .unwrap();
    assert!(!out.status.success());
    let plain = url.replace("https://", "http://");
    let out = tokio::task::spawn_blocking(move || sfuctl(&plain, None))
        .await
        .unwrap();
    assert!(!out.status.success());

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(15), served)
        .await
        .expect("the service stops")
        .unwrap()
        .unwrap();
}
