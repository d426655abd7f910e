//! Upload of finished recordings to S3-compatible storage (AWS S3, MinIO, Ceph, Garage...),
//! when `[recording.s3]` is configured.
//!
//! Once a recording's file is finalised it is sent in one `PUT` (path-style URL,
//! `{endpoint}/{bucket}/{prefix}{file name}`), signed with AWS Signature Version 4 over the
//! file's SHA-256 (computed first, off the async threads, so the store checks what it got),
//! the body streamed from the disk. Signature V4 is a few HMACs: written here with `hmac` and
//! `sha2` over the node's reqwest client rather than pulling in an SDK. An upload that fails
//! is tried again after 1, 2 and 4 s; the local file is kept in every case, and the recording
//! lists the object's URL or why the upload failed.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Attempts per file (the first and the retries).
const ATTEMPTS: u32 = 4;
/// Time allowed for one PUT: generous, a file may be a few GB.
const PUT_TIMEOUT: Duration = Duration::from_secs(3600);

/// `[recording.s3]`: where finished recordings are uploaded.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The service's base URL, `https://s3.eu-west-1.amazonaws.com` or `http://minio:9000`.
    pub endpoint: String,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Put before each file's name in the bucket (`recordings/`, say).
    #[serde(default)]
    pub prefix: String,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the endpoint {0:?} is not an http(s) URL")]
    Endpoint(String),
    #[error("PUT {url}: {detail}")]
    Put { url: String, detail: String },
}

/// Uploads files to one bucket.
#[derive(Clone)]
pub struct Uploader {
    config: S3Config,
    http: reqwest::Client,
    /// Before the first retry (doubled for each next one).
    retry_wait: Duration,
}

impl Uploader {
    /// `http` is the node's outgoing client (its TLS trust).
    pub fn new(config: S3Config, http: reqwest::Client) -> Self {
        Self {
            config,
            http,
            retry_wait: Duration::from_secs(1),
        }
    }

    /// The object's path (`/bucket/prefix/name`), each segment percent-encoded as S3 wants.
    fn object_path(&self, name: &str) -> String {
        let key = format!("{}{name}", self.config.prefix);
        let mut path = format!("/{}", encode(&self.config.bucket));
        for segment in key.split('/') {
            path.push('/');
            path.push_str(&encode(segment));
        }
        path
    }

    /// The URL a file named `name` is uploaded to.
    pub fn object_url(&self, name: &str) -> String {
        format!(
            "{}{}",
            self.config.endpoint.trim_end_matches('/'),
            self.object_path(name)
        )
    }

    /// Uploads `file`, trying again after failures; the object's URL.
    pub async fn upload(&self, file: &Path) -> Result<String, UploadError> {
        let mut wait = self.retry_wait;
        let mut attempt = 1;
        loop {
            match self.put(file).await {
                Ok(url) => return Ok(url),
                Err(e @ (UploadError::Read(..) | UploadError::Endpoint(_))) => return Err(e),
                Err(e) if attempt >= ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::warn!(file = %file.display(), attempt, "upload failed, trying again: {e}");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// One signed PUT of the whole file.
    async fn put(&self, file: &Path) -> Result<String, UploadError> {
        let read_error = |e| UploadError::Read(file.display().to_string(), e);
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let url = self.object_url(&name);
        let host = self
            .config
            .endpoint
            .strip_prefix("https://")
            .or_else(|| self.config.endpoint.strip_prefix("http://"))
            .map(|rest| rest.split('/').next().unwrap_or(""))
            .filter(|h| !h.is_empty())
            .ok_or_else(|| UploadError::Endpoint(self.config.endpoint.clone()))?
            .to_owned();
        let path = file.to_owned();
        let (hash, size) = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| read_error(std::io::Error::other(e)))?
            .map_err(read_error)?;
        let amz_date = amz_date(SystemTime::now());
        let authorization = authorization(
            &Signing {
                method: "PUT",
                host: &host,
                path: &self.object_path(&name),
                headers: &[("x-amz-content-sha256", &hash), ("x-amz-date", &amz_date)],
                payload_hash: &hash,
                amz_date: &amz_date,
                region: &self.config.region,
            },
            &self.config.access_key,
            &self.config.secret_key,
        );
        let body = tokio::fs::File::open(file).await.map_err(read_error)?;
        let put_error = |detail: String| UploadError::Put {
            url: url.clone(),
            detail,
        };
        let response = self
            .http
            .put(&url)
            .timeout(PUT_TIMEOUT)
            .header("authorization", authorization)
            .header("x-amz-content-sha256", &hash)
            .header("x-amz-date", &amz_date)
            .header("content-length", size)
            .body(reqwest::Body::from(body))
            .send()
            .await
            .map_err(|e| put_error(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(url);
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.chars().take(300).collect();
        Err(put_error(format!("{status}: {text}")))
    }
}

/// The SHA-256 of a file (lowercase hex) and its size, read in 1 MiB blocks.
fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

/// What a request signature covers.
struct Signing<'a> {
    method: &'a str,
    host: &'a str,
    /// Already percent-encoded.
    path: &'a str,
    /// Signed headers besides `host`, names in lowercase.
    headers: &'a [(&'a str, &'a str)],
    payload_hash: &'a str,
    /// `YYYYMMDDTHHMMSSZ`
    amz_date: &'a str,
    region: &'a str,
}

/// The `Authorization` header of AWS Signature Version 4 for S3 (no query string).
fn authorization(s: &Signing, access_key: &str, secret_key: &str) -> String {
    let mut headers: Vec<(&str, &str)> = vec![("host", s.host)];
    headers.extend_from_slice(s.headers);
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{}\n\n{canonical_headers}\n{signed}\n{}",
        s.method, s.path, s.payload_hash
    );
    let date = &s.amz_date[..8];
    let scope = format!("{date}/{}/s3/aws4_request", s.region);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        s.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [s.region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex(&hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes all but RFC 3986's unreserved characters (one path segment).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of AWS's documentation ("Signature Calculations for the Authorization
    /// Header", GET Object): the same inputs give the same signature.
    #[test]
    fn signs_as_aws_documents() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let auth = authorization(
            &Signing {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                headers: &[
                    ("range", "bytes=0-9"),
                    ("x-amz-content-sha256", empty),
                    ("x-amz-date", "20130524T000000Z"),
                ],
                payload_hash: empty,
                amz_date: "20130524T000000Z",
                region: "us-east-1",
            },
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    fn uploader(endpoint: &str, bucket: &str, prefix: &str) -> Uploader {
        sfu_control::tls::install_default_provider();
        Uploader::new(
            S3Config {
                endpoint: endpoint.into(),
                bucket: bucket.into(),
                region: default_region(),
                access_key: "AK".into(),
                secret_key: "SK".into(),
                prefix: prefix.into(),
            },
            reqwest::Client::builder().build().unwrap(),
        )
    }

    /// An endpoint that does not answer: tried [`ATTEMPTS`] times, then the error says why.
    #[tokio::test]
    async fn a_failing_upload_is_tried_again_then_reported() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let file = std::env::temp_dir().join(format!("sfu-upload-{}.webm", rand::random::<u32>()));
        std::fs::write(&file, b"not much").unwrap();
        let mut u = uploader(&format!("http://127.0.0.1:{port}"), "rec", "");
        u.retry_wait = Duration::from_millis(10);
        let started = std::time::Instant::now();
        let e = u.upload(&file).await.unwrap_err().to_string();
        assert!(e.starts_with("PUT http://127.0.0.1:"), "{e}");
        // Three waits: 10 + 20 + 40 ms.
        assert!(started.elapsed() >= Duration::from_millis(70));
        assert!(file.exists(), "the local file is kept");
        let _ = std::fs::remove_file(&file);
        let e = uploader("ftp://x", "rec", "")
            .upload(Path::new("/no/such/file"))
            .await;
        assert!(matches!(e, Err(UploadError::Endpoint(_))), "{e:?}");
    }

    #[test]
    fn dates_and_paths() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 2013-05-24
        assert_eq!(amz_date(t), "20130524T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(amz_date(t), "20000229T010101Z");
        let u = uploader("http://127.0.0.1:9000/", "rec", "town hall/");
        assert_eq!(
            u.object_url("a-EG_1.webm"),
            "http://127.0.0.1:9000/rec/town%20hall/a-EG_1.webm"
        );
    }

    /// What an upload costs before it starts: hashing the file (BENCHMARKS.md, "Recording
    /// uploads"). `cargo test -p sfu-node --lib upload::tests::hash_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement: writes and reads 512 MB"]
    fn hash_speed() {
        let file = std::env::temp_dir().join(format!("sfu-hash-{}.bin", rand::random::<u32>()));
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        {
            let mut f = std::fs::File::create(&file).unwrap();
            for _ in 0..512 {
                std::io::Write::write_all(&mut f, &block).unwrap();
            }
        }
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let (_, size) = sha256_file(&file).unwrap();
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "SHA-256 of {} MB: {secs:.2} s, {:.0} MB/s",
                size >> 20,
                (size >> 20) as f64 / secs
            );
        }
        let _ = std::fs::remove_file(&file);
    }
}
