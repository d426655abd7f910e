//! H.264 (a WHIP publisher) recorded to MP4, and uploaded to S3-compatible storage.

use super::common;
use super::common::recording::{RecordingApi, assert_decodes, first_stream, webhooks};
use super::common::{Browser, browser_lock};
use super::moto::{moto, s3_config, s3_object};
use std::path::Path;
use std::time::Duration;

/// H.264 (a WHIP publisher) goes to MP4, and the file is uploaded to S3-compatible storage
/// (moto): the listing and the `egress_ended` webhook say the object's URL, and the object's
/// bytes are the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_is_recorded_to_mp4() {
    let _guard = browser_lock().await;
    let _ = common::tracing_subscriber_init();
    let dir = std::env::temp_dir().join(format!("sfu-rec264-{}", rand::random::<u32>()));
    let s3 = moto("recordings").await;
    let (hook, hooks) = webhooks().await;
    let mut config = sfu_node::Config::loopback();
    config.recording.dir = dir.clone();
    config.webhook.urls = vec![hook];
    config.recording.s3 = Some(s3_config(&s3, "e2e/"));
    let node = sfu_node::Server::start(config).await.unwrap();
    let base = format!("http://{}", node.http_addr);
    let room = "rec-h264";
    let mut browser = Browser::launch(&[(
        "whip",
        format!("{base}/whip.html?room={room}&identity=obs&codec=h264"),
    )])
    .await;
    let api = RecordingApi::new(&base);
    let video = api.wait_track(room, "video").await;
    let (status, info) = api.start_track(room, &video).await;
    assert_eq!(status, 201, "{info}");
    let _ = browser.until(Duration::from_secs(6), |_| false).await;
    let id = info["id"].as_str().unwrap();
    let done = api.stop(id).await;
    browser.stop().await;
    assert_eq!(done["state"], "complete", "{done}");
    let file = Path::new(done["file"].as_str().unwrap());
    assert_eq!(file.extension().unwrap(), "mp4");
    let (codec, duration) = first_stream(file);
    eprintln!("h264: {codec} {duration:.2} s: {done}");
    assert_eq!(codec, "h264", "{done}");
    assert_decodes(file, "the MP4 file");

    // Uploaded once finalised: the listing says where, and the object is the file.
    let mut listed = serde_json::Value::Null;
    for _ in 0..100 {
        listed = api.get(id).await;
        if listed["upload"] != "uploading" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed["upload"], "uploaded", "{listed}");
    let url = listed["url"].as_str().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert_eq!(url, format!("{}/recordings/e2e/{name}", s3.endpoint));
    // moto checks signatures: a PUT signed with a wrong secret is refused.
    let forged = common::http()
        .put(format!("{url}.forged"))
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature={}",
                s3.access_key,
                "0".repeat(64)
            ),
        )
        .header("x-amz-date", "20260101T000000Z")
        .body("forged")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403, "{forged:?}");
    let object = s3_object(&s3, "recordings", &format!("e2e/{name}"));
    let local = std::fs::read(file).unwrap();
    assert_eq!(
        object.len(),
        local.len(),
        "the object is as long as the file"
    );
    assert!(object[..] == local[..], "the object's bytes are the file's");
    let mut ended = None;
    for _ in 0..50 {
        ended = hooks
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["event"] == "egress_ended")
            .cloned();
        if ended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = ended.expect("egress_ended is sent once the upload is over");
    assert_eq!(ended["egress"]["url"], url, "{ended}");
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
