//! S3 Object Lock: retention on uploaded objects, and the few S3 requests `object_store`
//! cannot make (object_store sends no lock headers and knows no object versions).
//!
//! Those requests are signed with object_store's own SigV4 [`AwsAuthorizer`] and the same
//! credentials, and sent with reqwest: `PUT` with `x-amz-object-lock-mode` and
//! `x-amz-object-lock-retain-until-date` (plus `Content-MD5`, which AWS demands with a lock),
//! `HEAD` read for the lock and the version id, `PUT ?retention` to extend a lock,
//! `DELETE ?versionId=` to delete a version for good, and `GET ?versions` to find delete
//! markers.
//!
//! Why versions matter: a bucket with Object Lock is versioned, so a plain `DELETE` only
//! hides an object behind a delete marker (the locked version stays, and keeps costing
//! money until it is removed). coffer therefore deletes versions (refused by S3 while
//! locked), and `coffer repair undelete` removes delete markers that someone else made.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderName, HeaderValue, Method};
use md5::Digest as _;
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::{HttpRequest, HttpRequestBody};

use crate::retry::{self, Failure, Policy};

/// Retention mode: governance (an account with `s3:BypassGovernanceRetention` may still
/// delete) or compliance (nobody may, not even the bucket's owner, until the date).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Governance,
    Compliance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// The retention coffer puts on new objects: `COFFER_S3_OBJECT_LOCK=MODE:DURATION`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLock {
    pub mode: LockMode,
    pub secs: i64,
}

impl ObjectLock {
    /// `governance:30d`, `compliance:13w`, `governance:36h` (the one duration grammar,
    /// [`coffer_core::duration`]).
    pub fn parse(s: &str) -> Result<ObjectLock, String> {
        let bad = || {
            format!(
                "S3 object lock {s:?}: expected MODE:DURATION, e.g. governance:30d or compliance:90d \
                 (durations as everywhere: 36h, 30d, 13w, 1y)"
            )
        };
        let (mode, dur) = s.trim().split_once(':').ok_or_else(bad)?;
        let mode = match mode.to_ascii_lowercase().as_str() {
            "governance" => LockMode::Governance,
            "compliance" => LockMode::Compliance,
            _ => return Err(bad()),
        };
        let secs = coffer_core::duration::parse(dur, "S3 object lock")
            .ok()
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .filter(|&s| s > 0)
            .ok_or_else(bad)?;
        Ok(ObjectLock { mode, secs })
    }
}

/// What a `HEAD` says about an object's version and lock.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectHead {
    /// `None` on an unversioned bucket (or S3's `"null"` version).
    pub version: Option<String>,
    pub mode: Option<String>,
    pub retain_until: Option<DateTime<Utc>>,
}

impl ObjectHead {
    /// The lock's end if it is still in force.
    pub fn locked_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.retain_until.filter(|u| *u > now)
    }
}

/// A version listed by `GET ?versions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version: String,
    pub latest: bool,
    pub delete_marker: bool,
    pub modified: Option<DateTime<Utc>>,
}

/// Signed requests to one bucket.
pub struct Signer {
    pub http: reqwest::Client,
    pub credentials: AwsCredentialProvider,
    pub region: String,
    /// `scheme://host[:port]/bucket` (path style) or `scheme://bucket.host` (virtual host).
    pub base: String,
}

/// The bytes of a key that go into a URL path unescaped.
const KEY_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// An S3 error answer's `Code: Message`, or the status.
fn s3_error(status: reqwest::StatusCode, body: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&format!("</{t}>"))?;
        Some(body[start..start + end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m} (HTTP {})", status.as_u16()),
        (Some(c), None) => format!("{c} (HTTP {})", status.as_u16()),
        _ => format!("HTTP {}", status.as_u16()),
    }
}

fn md5_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Signer {
    fn url(&self, key: &str, query: &str) -> String {
        let mut u = format!(
            "{}/{}",
            self.base,
            percent_encoding::utf8_percent_encode(key, KEY_KEEP)
        );
        if !query.is_empty() {
            u.push('?');
            u.push_str(query);
        }
        u
    }

    /// Send one signed request, retrying connection failures, 5xx and throttling with
    /// backoff (each attempt signed anew). Returns the final status, headers and body.
    pub async fn send(
        &self,
        method: Method,
        key: &str,
        query: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<(reqwest::StatusCode, http::HeaderMap, Bytes), String> {
        let url = self.url(key, query);
        let policy = Policy {
            retries: 6,
            first: Duration::from_millis(200),
            longest: Duration::from_secs(7),
        };
        let label = format!("S3 {method} {key}");
        // a status worth retrying is carried in `held`: when the retries are spent, the
        // caller gets that last answer as it came
        let held = std::sync::Mutex::new(None);
        let r = retry::asynchronous(policy, &label, || {
            let attempt = self.send_once(method.clone(), &url, headers, body.clone());
            let held = &held;
            async move {
                let r = attempt.await;
                let mut last = held.lock().unwrap_or_else(|p| p.into_inner());
                *last = None;
                match r {
                    Ok((status, h, b)) if status.is_server_error() || status.as_u16() == 429 => {
                        *last = Some((status, h, b));
                        Err(Failure::Again(format!("server answered {status}")))
                    }
                    Ok(x) => Ok(x),
                    Err(e) => Err(Failure::Again(e)),
                }
            }
        })
        .await;
        let last = held.into_inner().unwrap_or_else(|p| p.into_inner());
        match (r, last) {
            (Ok(x), _) => Ok(x),
            (Err(Failure::Again(_)), Some(answer)) => Ok(answer),
            (Err(Failure::Again(e)), None) => Err(e),
            (Err(Failure::Stop(e)), _) => Err(e),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<(reqwest::StatusCode, http::HeaderMap, Bytes), String> {
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| format!("S3 credentials: {e}"))?;
        let mut req = HttpRequest::new(HttpRequestBody::from(body.clone()));
        *req.method_mut() = method.clone();
        *req.uri_mut() = url.parse().map_err(|e| format!("S3 URL {url:?}: {e}"))?;
        for (k, v) in headers {
            let v = HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
            req.headers_mut().insert(HeaderName::from_static(k), v);
        }
        AwsAuthorizer::new(&credential, "s3", &self.region).authorize(&mut req, None);
        let resp = self
            .http
            .request(method, url)
            .headers(req.headers().clone())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                // reqwest's own text hides the cause (connection refused, TLS, ...)
                let mut text = e.to_string();
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    text.push_str(&format!(": {c}"));
                    cause = c.source();
                }
                crate::s3::one_line(&text)
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, headers, body))
    }

    /// `HEAD`: version and lock, `None` if there is no such object (or its latest version
    /// is a delete marker).
    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>, String> {
        let (status, h, body) = self.send(Method::HEAD, key, "", &[], Bytes::new()).await?;
        if status.as_u16() == 404 {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(s3_error(status, &String::from_utf8_lossy(&body)));
        }
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Ok(Some(ObjectHead {
            version: get("x-amz-version-id").filter(|v| v != "null"),
            mode: get("x-amz-object-lock-mode"),
            retain_until: get("x-amz-object-lock-retain-until-date")
                .and_then(|d| DateTime::parse_from_rfc3339(&d).ok())
                .map(|d| d.with_timezone(&Utc)),
        }))
    }

    /// `PUT` of a new object under `lock` until `until`; never replaces an object
    /// (`If-None-Match: *`). `Ok(false)` if the name exists already.
    pub async fn put_locked(
        &self,
        key: &str,
        data: Bytes,
        lock: ObjectLock,
        until: DateTime<Utc>,
        only_new: bool,
    ) -> Result<bool, String> {
        let mut headers = vec![
            ("content-md5", md5_b64(&data)),
            ("x-amz-object-lock-mode", lock.mode.as_str().to_string()),
            ("x-amz-object-lock-retain-until-date", rfc3339(until)),
        ];
        if only_new {
            headers.push(("if-none-match", "*".to_string()));
        }
        let (status, _, body) = self.send(Method::PUT, key, "", &headers, data).await?;
        match status.as_u16() {
            200..=299 => Ok(true),
            // 409: a concurrent conditional write of the same name
            412 | 409 => Ok(false),
            _ => Err(s3_error(status, &String::from_utf8_lossy(&body))),
        }
    }

    /// `PUT ?retention`: lock the object until `until` (S3 refuses to shorten a lock).
    pub async fn put_retention(&self, key: &str, mode: &str, until: DateTime<Utc>) -> Result<(), String> {
        let xml = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{mode}</Mode>\
             <RetainUntilDate>{}</RetainUntilDate></Retention>",
            rfc3339(until)
        );
        let headers = [("content-md5", md5_b64(xml.as_bytes()))];
        let (status, _, body) = self
            .send(Method::PUT, key, "retention=", &headers, Bytes::from(xml))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(s3_error(status, &String::from_utf8_lossy(&body)))
        }
    }

    /// `DELETE ?versionId=`: remove one version for good (S3 refuses while it is locked).
    pub async fn delete_version(&self, key: &str, version: &str) -> Result<(), String> {
        let q = format!(
            "versionId={}",
            percent_encoding::utf8_percent_encode(version, percent_encoding::NON_ALPHANUMERIC)
        );
        let (status, _, body) = self.send(Method::DELETE, key, &q, &[], Bytes::new()).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(s3_error(status, &String::from_utf8_lossy(&body)))
        }
    }

    /// Every version and delete marker below `prefix` (`GET ?versions`, paged to its end).
    pub async fn list_versions(&self, prefix: &str) -> Result<Vec<Version>, String> {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut out = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let mut q = format!("prefix={}&versions=", enc(prefix));
            if let Some(k) = &key_marker {
                q = format!("key-marker={}&{q}", enc(k));
            }
            if let Some(v) = &version_marker {
                q.push_str(&format!("&version-id-marker={}", enc(v)));
            }
            // the bucket itself: an empty key
            let (status, _, body) = self.send(Method::GET, "", &q, &[], Bytes::new()).await?;
            let text = String::from_utf8_lossy(&body);
            if !status.is_success() {
                return Err(s3_error(status, &text));
            }
            let page: ListVersionsResult =
                quick_xml::de::from_str(&text).map_err(|e| format!("listing versions: {e}"))?;
            for (v, marker) in page
                .versions
                .into_iter()
                .map(|v| (v, false))
                .chain(page.delete_markers.into_iter().map(|v| (v, true)))
            {
                out.push(Version {
                    key: v.key,
                    version: v.version_id,
                    latest: v.is_latest,
                    delete_marker: marker,
                    modified: v
                        .last_modified
                        .as_deref()
                        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                        .map(|d| d.with_timezone(&Utc)),
                });
            }
            if !page.is_truncated {
                return Ok(out);
            }
            if page.next_key_marker.is_none() && page.next_version_id_marker.is_none() {
                return Err("listing versions: truncated answer without a continuation marker".into());
            }
            key_marker = page.next_key_marker;
            version_marker = page.next_version_id_marker;
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListVersionsResult {
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_version_id_marker: Option<String>,
    #[serde(rename = "Version", default)]
    versions: Vec<VersionEntry>,
    #[serde(rename = "DeleteMarker", default)]
    delete_markers: Vec<VersionEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VersionEntry {
    key: String,
    version_id: String,
    #[serde(default)]
    is_latest: bool,
    last_modified: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_settings_parse() {
        assert_eq!(
            ObjectLock::parse("governance:30d").unwrap(),
            ObjectLock {
                mode: LockMode::Governance,
                secs: 30 * 86_400
            }
        );
        assert_eq!(
            ObjectLock::parse("COMPLIANCE:1y2w").unwrap().secs,
            31_557_600 + 14 * 86_400
        );
        assert_eq!(ObjectLock::parse("governance:90s").unwrap().secs, 90);
        for bad in [
            "30d",
            "governance:",
            "governance:30",
            "governance:30x",
            "legal:30d",
            "governance:0d",
        ] {
            assert!(ObjectLock::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn version_listings_decode() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>a/</Prefix>
<IsTruncated>true</IsTruncated><NextKeyMarker>a/y</NextKeyMarker><NextVersionIdMarker>v9</NextVersionIdMarker>
<Version><Key>a/x</Key><VersionId>v1</VersionId><IsLatest>false</IsLatest><LastModified>2026-11-26T16:15:44Z</LastModified><Size>6</Size></Version>
<DeleteMarker><Key>a/x</Key><VersionId>v2</VersionId><IsLatest>true</IsLatest><LastModified>2026-11-26T16:16:00Z</LastModified></DeleteMarker>
<Version><Key>a/y</Key><VersionId>v3</VersionId><IsLatest>true</IsLatest><LastModified>2026-11-26T16:17:00.000Z</LastModified></Version>
</ListVersionsResult>"#;
        let r: ListVersionsResult = quick_xml::de::from_str(xml).unwrap();
        assert!(r.is_truncated);
        assert_eq!(r.next_key_marker.as_deref(), Some("a/y"));
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.delete_markers.len(), 1);
        assert!(r.delete_markers[0].is_latest);
        assert_eq!(r.versions[1].key, "a/y");
    }

    #[test]
    fn s3_errors_are_one_line() {
        let body = "<?xml version=\"1.0\"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>";
        assert_eq!(
            s3_error(reqwest::StatusCode::FORBIDDEN, body),
            "AccessDenied: Access Denied. (HTTP 403)"
        );
        assert_eq!(s3_error(reqwest::StatusCode::BAD_GATEWAY, ""), "HTTP 502");
    }
}
