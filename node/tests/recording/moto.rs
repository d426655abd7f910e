//! A real S3-compatible server for the upload tests: moto (PyPI's `moto[s3]` and its server,
//! which test.sh installs in `target/s3-venv`), run on a loopback port with authentication
//! on; and reading its objects back with boto3.

use super::common;
use super::common::process::free_port;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A real S3-compatible server on a loopback port: moto (PyPI's `moto[s3]` and its server,
/// which test.sh installs in `target/s3-venv`) checking request signatures, with one bucket
/// and one user allowed to use it. Stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv(bin: &str) -> String {
    let path = format!("{}/../target/s3-venv/bin/{bin}", env!("CARGO_MANIFEST_DIR"));
    assert!(
        Path::new(&path).exists(),
        "moto is missing: run ./test.sh (it makes target/s3-venv)"
    );
    path
}

/// `application/x-www-form-urlencoded` (reqwest is built without its `form` feature).
fn form_body(form: &[(&str, &str)]) -> String {
    let encode = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let pairs: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.join("&")
}

/// The text of `<tag>` in an XML answer.
fn xml_field(xml: &str, tag: &str) -> String {
    let open = format!("<{tag}>");
    xml.split(&open)
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .unwrap_or_else(|| panic!("no {tag} in {xml}"))
        .to_owned()
}

pub async fn moto(bucket: &str) -> Moto {
    let port = free_port();
    // Requests are authenticated (signatures checked against IAM's keys) after the first
    // four, which set it up.
    let child = Command::new(venv("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "4")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto_server starts");
    let mut m = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        access_key: String::new(),
        secret_key: String::new(),
    };
    let http = common::http();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = http.put(format!("{}/{bucket}", m.endpoint)).send().await {
            assert!(r.status().is_success(), "{r:?}");
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "moto did not answer on {}", m.endpoint);
    // IAM requests go to the same server; the (unchecked) scope says which service.
    let iam = |form: &[(&str, &str)]| {
        let mut form = form.to_vec();
        form.push(("Version", "2010-05-08"));
        http.post(&m.endpoint)
            .header(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form_body(&form))
            .send()
    };
    let ok = |r: reqwest::Response| {
        assert!(r.status().is_success(), "{r:?}");
        r.text()
    };
    ok(iam(&[("Action", "CreateUser"), ("UserName", "rec")])
        .await
        .unwrap())
    .await
    .unwrap();
    let key = ok(iam(&[("Action", "CreateAccessKey"), ("UserName", "rec")])
        .await
        .unwrap())
    .await
    .unwrap();
    m.access_key = xml_field(&key, "AccessKeyId");
    m.secret_key = xml_field(&key, "SecretAccessKey");
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
    ok(iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", "rec"),
        ("PolicyName", "recordings"),
        ("PolicyDocument", policy),
    ])
    .await
    .unwrap())
    .await
    .unwrap();
    m
}

/// A node's `[recording.s3]` for moto's bucket `recordings`.
pub fn s3_config(s3: &Moto, prefix: &str) -> sfu_node::recording::upload::S3Config {
    sfu_node::recording::upload::S3Config {
        endpoint: s3.endpoint.clone(),
        bucket: "recordings".into(),
        region: "us-east-1".into(),
        access_key: s3.access_key.clone(),
        secret_key: s3.secret_key.clone(),
        prefix: prefix.into(),
    }
}

/// An object of moto's, read with boto3 (AWS's own client, in moto's venv).
pub fn s3_object(s3: &Moto, bucket: &str, key: &str) -> Vec<u8> {
    let script = "import sys, boto3\n\
        c = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1',\n\
            aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\n\
        sys.stdout.buffer.write(c.get_object(Bucket=sys.argv[4], Key=sys.argv[5])['Body'].read())\n";
    let out = Command::new(venv("python"))
        .args(["-c", script])
        .args([&s3.endpoint, &s3.access_key, &s3.secret_key, bucket, key])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
