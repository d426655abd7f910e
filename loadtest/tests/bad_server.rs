//! A server that answers nonsense does not crash the load tester: every peer fails with a
//! reason that says what went wrong, and the run still reports.

use sfu_loadtest::report::Report;
use sfu_loadtest::run::{Watch, run};
use sfu_loadtest::scenario::Scenario;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server on loopback that answers every request with `status` and `body`.
async fn canned(status: &'static str, content_type: &'static str, body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                // Read the request head and its body, then answer.
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let length = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if req.len() >= head_end + 4 + length {
                            break;
                        }
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

async fn run_against(kind: &str, url: String) -> Report {
    let s = Scenario::from_toml(&format!(
        "publishers = 1\nsubscribers = 1\nwarmup_secs = 0\nduration_secs = 1\n\
         [target]\nkind = \"{kind}\"\nurl = \"{url}\"\n[audio]\nbitrate_kbps = 32\n"
    ))
    .unwrap();
    let r = run(&s, &Watch::default()).await.expect("the run reports");
    println!("{r}");
    r
}

fn all_failed_saying(r: &Report, what: &str) {
    assert_eq!(
        (r.peers, r.peers_failed, r.peers_connected),
        (2, 2, 0),
        "{r}"
    );
    assert!(
        r.failures.iter().all(|f| f.contains(what)),
        "every failure says {what:?}: {:?}",
        r.failures
    );
    assert!(r.join_time_ms.is_none() && r.latency_ms.is_none());
}

#[tokio::test]
async fn a_whip_answer_that_is_not_sdp_fails_the_peers() {
    let url = canned("201 Created", "application/sdp", "this is not SDP").await;
    let r = run_against("whip", url).await;
    all_failed_saying(&r, "answer");
}

#[tokio::test]
async fn a_whip_error_status_fails_the_peers_with_it() {
    let url = canned("500 Internal Server Error", "text/plain", "boom").await;
    let r = run_against("whip", url).await;
    all_failed_saying(&r, "500");
}

#[tokio::test]
async fn janus_without_a_session_id_fails_the_peers() {
    let url = canned("200 OK", "application/json", r#"{"janus":"success"}"#).await;
    let r = run_against("janus", url).await;
    all_failed_saying(&r, "no session");
}

#[tokio::test]
async fn janus_answering_html_fails_the_peers() {
    let url = canned("200 OK", "text/html", "<html>hello</html>").await;
    let r = run_against("janus", url).await;
    all_failed_saying(&r, "Janus");
}

#[tokio::test]
async fn a_node_without_websocket_fails_the_peers() {
    let url = canned("404 Not Found", "text/plain", "no").await;
    let r = run_against("sfu", url).await;
    all_failed_saying(&r, "/rtc");
}
