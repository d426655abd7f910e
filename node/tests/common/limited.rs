//! The setting of the congestion test and benchmark: a node whose media towards subscribers
//! passes an in-process bandwidth limiter ([`Shaper`]), a Chromium page publishing simulcast
//! from a noise camera, and a Chromium page subscribing behind the limit, rendering it large.
//!
//! The node binds its media port on 127.0.0.1 and announces 127.0.0.2, where the limiter
//! listens on the same port.

use super::Browser;
use super::noise::noise_camera;
use super::shaper::Shaper;
use sfu_node::{Config, Server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;

/// Height of the low layer: a quarter of the noise video's 480. (At 640x480 Chrome sends two
/// simulcast layers, 160x120 and 320x240; it drops the third below 960x540.)
pub const LOW_HEIGHT: f64 = 120.0;

/// Pages `pub` (alice, publishing) and `sub` (bob, behind the limiter).
pub struct LimitedRoom {
    pub node: Server,
    pub limiter: Shaper,
    pub browser: Browser,
    /// The node's HTTP base URL.
    pub base: String,
    dir: PathBuf,
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl LimitedRoom {
    /// Starts the node, the limiter at `limit_bps` and both pages in `room`.
    pub async fn start(room: &str, limit_bps: u64) -> LimitedRoom {
        let port = free_port();
        let mut config = Config::loopback();
        config.rtc.workers = 1;
        config.rtc.udp_port = port;
        config.rtc.bind_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        config.rtc.node_ips = vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))];
        let node = Server::start(config).await.expect("node starts");
        let limiter = Shaper::start(
            SocketAddr::from(([127, 0, 0, 2], port)),
            SocketAddr::from(([127, 0, 0, 1], port)),
            limit_bps,
        )
        .await;
        let base = format!("http://{}", node.http_addr);
        let dir = std::env::temp_dir().join(format!("sfu-limited-{}-{room}", std::process::id()));
        let camera = noise_camera(&dir);
        let browser = Browser::launch_with_args(
            &[
                (
                    "pub",
                    format!("{base}/demo.html?room={room}&identity=alice&autojoin=1&publish=1&simulcast=1"),
                ),
                (
                    "sub",
                    // Rendered large: it would take the top layer if the bandwidth allowed.
                    format!("{base}/demo.html?room={room}&identity=bob&autojoin=1&publish=0&tilewidth=640"),
                ),
            ],
            &[camera],
        )
        .await;
        LimitedRoom {
            node,
            limiter,
            browser,
            base,
            dir,
        }
    }

    pub async fn stop(self) {
        self.browser.stop().await;
        self.node.stop().await;
        drop(self.limiter);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
