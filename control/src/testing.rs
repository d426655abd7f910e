//! Test support: a real etcd server (Debian's `etcd` binary) on free loopback ports in a
//! temporary directory, stopped when dropped; with TLS and client certificates if asked.

use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd.
pub struct Etcd {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Files of an etcd serving TLS: its certificate and key, and the CA whose certificates it
/// requires of clients.
pub struct EtcdTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub client_ca: &'a Path,
}

impl Etcd {
    /// Starts etcd and waits until it serves.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS only, and only clients with a certificate from
    /// `tls.client_ca` (`https://` endpoint).
    pub fn start_tls(tls: &EtcdTls) -> anyhow::Result<Self> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<&EtcdTls>) -> anyhow::Result<Self> {
        let (client, peer, metrics) = (free_port()?, free_port()?, free_port()?);
        let dir = std::env::temp_dir().join(format!("sfu-etcd-{}-{client}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let mut command = Command::new("etcd");
        if let Some(tls) = tls {
            command
                .arg("--cert-file")
                .arg(tls.cert)
                .arg("--key-file")
                .arg(tls.key)
                .arg("--trusted-ca-file")
                .arg(tls.client_ca)
                .arg("--client-cert-auth");
        }
        let child = command
            // Health is asked in plain HTTP here, whatever the client port speaks.
            .args([
                "--listen-metrics-urls",
                &format!("http://127.0.0.1:{metrics}"),
            ])
            .args(["--name", "test", "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        let etcd = Self {
            child,
            dir,
            endpoint: client_url,
        };
        // Serving means healthy (a leader elected), not merely listening.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if healthy(metrics) {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "etcd did not start; see {}",
            etcd.dir.join("etcd.log").display()
        )
    }

    /// Freezes the process (SIGSTOP): etcd is unreachable but keeps its state.
    pub fn pause(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Resumes a paused etcd (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "CONT");
    }
}

/// etcd's `/health` answers `{"health":"true"}` once it has a leader.
fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The control plane for a test cluster on `etcd` (`cluster` prefix, development key), serving
/// on a free loopback port until the process ends; waits until `nodes` nodes have reported
/// their load. Its state, and its base URL.
pub async fn serve_control(
    etcd: &str,
    cluster: &str,
    nodes: usize,
) -> anyhow::Result<(std::sync::Arc<crate::service::Control>, String)> {
    let api =
        crate::service::connect(&[etcd.to_owned()], cluster, &crate::keys::dev_keys()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(crate::service::serve(
        api.clone(),
        listener,
        std::future::pending(),
    ));
    for _ in 0..100 {
        let reported = api
            .membership
            .nodes()
            .iter()
            .filter(|n| n.updated_ms > 0)
            .count();
        if reported >= nodes {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((api, url))
}
