//! Node processes: the real `sfu-node` binary in a cluster on loopback, with its log in a
//! file (shown when a test fails) and signals sent to it like an init system would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A node process.
pub struct NodeProcess {
    pub id: String,
    pub http: u16,
    pub child: Child,
    pub log: PathBuf,
}

impl NodeProcess {
    /// Starts node `id` in cluster `it` of `etcd`, its relay on `relay` (advertised as
    /// `advertise` if given), with `extra` arguments (e.g. `--config FILE`).
    pub fn start(
        id: &str,
        etcd: &str,
        certs: &Path,
        dir: &Path,
        relay: u16,
        advertise: Option<SocketAddr>,
        extra: &[&str],
    ) -> NodeProcess {
        let http = free_port();
        let log = dir.join(format!("{id}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfu-node"));
        // A cluster on one machine, with the development key.
        cmd.args(["--node-id", id, "--etcd", etcd, "--cluster", "it", "--dev"])
            .arg("--certs-dir")
            .arg(certs)
            .args(["--bind", &format!("127.0.0.1:{http}")])
            .args([
                "--udp-port",
                "0",
                "--node-ip",
                "127.0.0.1",
                "--workers",
                "2",
            ])
            .args(["--relay-bind", &format!("127.0.0.1:{relay}")])
            .args(extra)
            .env("SFU_LOG", "info,sfu_relay=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(a) = advertise {
            cmd.args(["--relay-advertise", &a.to_string()]);
        }
        let child = cmd.spawn().expect("node binary runs");
        NodeProcess {
            id: id.into(),
            http,
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    /// The status of `/readyz` (0 if the node does not answer).
    pub async fn readyz(&self) -> u16 {
        match super::http()
            .get(format!("{}/readyz", self.url()))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Waits until `/readyz` says ready; panics with the log after 30 s.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.readyz().await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready; log:\n{}", self.id, self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`...) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {}", self.child.id());
    }

    /// Waits for the process to exit, for at most `limit`.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Make a failure diagnosable from the test output alone.
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.id);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
