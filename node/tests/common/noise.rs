//! A video of noise for Chromium's fake camera. No encoder can compress noise, so each simulcast
//! layer runs at its configured maximum bitrate, as real camera pictures with detail and motion
//! do (Chrome's built-in test pattern needs only a few tens of kbps per layer).

use std::io::Write;
use std::path::Path;

/// One second of 640x480 noise at 30 fps as a Y4M file (Chromium loops it). At 640x480
/// Chrome sends two simulcast layers, 160x120 and 320x240; it drops the third below 960x540.
pub fn write_noise(path: &Path) {
    let (w, h) = (640usize, 480usize);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("noise file"));
    writeln!(f, "YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg").unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut frame = vec![0u8; w * h * 3 / 2];
    for _ in 0..30 {
        for b in frame.iter_mut() {
            // xorshift: cheap noise.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        f.write_all(b"FRAME\n").unwrap();
        f.write_all(&frame).unwrap();
    }
}

/// The Chromium flag that makes its fake camera play a noise video written into `dir`.
pub fn noise_camera(dir: &Path) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("noise.y4m");
    write_noise(&file);
    format!("--use-file-for-fake-video-capture={}", file.display())
}
