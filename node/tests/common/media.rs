//! Media helpers for recording and streaming tests: fake camera and microphone files for
//! Chromium, ffprobe, a real RTMP server (nginx), and the node's CPU and memory.

use super::Browser;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Chromium flags for a fake camera showing one colour and a fake microphone playing a tone.
pub fn camera_and_tone(dir: &Path, name: &str, colour: &str, size: &str, hz: u32) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let video = dir.join(format!("{name}.y4m"));
    let audio = dir.join(format!("{name}.wav"));
    let made = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("color=c={colour}:s={size}:r=30:d=2"))
        .args(["-pix_fmt", "yuv420p"])
        .arg(&video)
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=frequency={hz}:sample_rate=48000:duration=4"))
        .args(["-af", "volume=0.8"])
        .arg(&audio)
        .status()
        .expect("ffmpeg is installed");
    assert!(made.success());
    vec![
        format!("--use-file-for-fake-video-capture={}", video.display()),
        format!("--use-file-for-fake-audio-capture={}", audio.display()),
    ]
}

/// Lets `browsers` run for `d`, reading their reports (their output must be read).
pub async fn run_for(browsers: &mut [&mut Browser], d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for b in browsers.iter_mut() {
            let _ = b.sample().await;
        }
    }
}

/// `(codec_type, codec_name)` of each stream, and the file's duration, as ffprobe reads them.
pub fn probe(file: &Path) -> (Vec<(String, String)>, f64) {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-print_format", "json"])
        .args([
            "-show_entries",
            "stream=codec_type,codec_name:format=duration",
        ])
        .arg(file)
        .output()
        .expect("ffprobe is installed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let streams = v["streams"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| {
                    (
                        s["codec_type"].as_str().unwrap_or("").to_owned(),
                        s["codec_name"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (streams, duration)
}

/// A real RTMP server: Debian's nginx with its RTMP module, on a loopback port, recording
/// what it receives under `dir/rec` (not a system service: a child of the test).
pub struct Nginx {
    child: std::process::Child,
    pub port: u16,
}

impl Nginx {
    pub fn start(dir: &Path) -> Nginx {
        let module = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
        assert!(
            Path::new(module).exists(),
            "nginx's RTMP module is missing: apt-get install nginx libnginx-mod-rtmp (test.sh does)"
        );
        std::fs::create_dir_all(dir.join("rec")).unwrap();
        let port = super::process::free_port();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             load_module {module};\nevents {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; \
             record all; record_path {d}/rec; record_unique off; }} }} }}\n",
            d = dir.display()
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .spawn()
            .expect("nginx is installed");
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Nginx { child, port }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs ffprobe or ffmpeg for at most `limit` (a live input may not end by itself).
pub async fn run_limited(program: &str, args: &[&str], limit: Duration) -> (bool, String, String) {
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, child).await {
        Ok(Ok(out)) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        _ => (
            false,
            String::new(),
            format!("{program} did not finish in {limit:?}"),
        ),
    }
}

/// This process's CPU time so far (user + system) and its resident memory.
pub fn cpu_and_rss() -> (Duration, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    (Duration::from_millis(ticks * 10), rss_kb * 1024)
}

/// CPU (% of one core) of this process (the node) over `window`, and its RSS after.
pub async fn measure(browser: &mut Browser, window: Duration) -> (f64, u64) {
    let (before, _) = cpu_and_rss();
    let t = Instant::now();
    run_for(&mut [browser], window).await;
    let (after, rss) = cpu_and_rss();
    (
        (after - before).as_secs_f64() / t.elapsed().as_secs_f64() * 100.0,
        rss,
    )
}
