//! Alerts: email (SMTP through lettre: STARTTLS, implicit TLS or, for a relay on this
//! machine, none; with or without authentication) and webhooks (a JSON POST with a `text`
//! field, so Slack-style, ntfy and healthchecks-style endpoints take it as is).
//!
//! Every message goes through the outbox table first: an incident and its alert are
//! recorded together, and delivery is retried with backoff (30 s doubling to an hour, for
//! a day) until the mail server or the webhook takes it. A message is delivered once per
//! target; the outbox doubles as the alert log.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Message, SmtpTransport, Transport};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::catalog::Catalog;
use crate::monitor::fmt_time;
use crate::records::{Incident, OutboxItem};
use crate::{Result, Server, ServerError};

/// How the server reaches its mail server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    /// `starttls` (the default, port 587), `tls` (implicit, port 465) or `none` (a relay on
    /// this machine or a trusted network only).
    pub tls: String,
    #[serde(default)]
    pub user: Option<String>,
    /// A CA certificate (PEM file) to trust for the mail server besides the system's, for a
    /// relay with a private CA or a self-signed certificate.
    #[serde(default)]
    pub cacert: Option<String>,
}

/// Where alerts go, and when they are raised. The SMTP password is kept apart (setting
/// `smtp_password`) and never shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSettings {
    #[serde(default)]
    pub smtp: Option<SmtpSettings>,
    #[serde(default)]
    pub mail_from: Option<String>,
    #[serde(default)]
    pub mail_to: Vec<String>,
    #[serde(default)]
    pub webhooks: Vec<String>,
    /// Time of day (UTC, `HH:MM`) of the daily digest; none without it.
    #[serde(default)]
    pub digest_at: Option<String>,
    /// A backup with more warnings than this raises a warning incident.
    #[serde(default)]
    pub warnings_above: u64,
    /// A repository this full (percent of its quota) raises a quota incident.
    #[serde(default = "default_quota_percent")]
    pub quota_percent: u8,
}

fn default_quota_percent() -> u8 {
    90
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            smtp: None,
            mail_from: None,
            mail_to: Vec::new(),
            webhooks: Vec::new(),
            digest_at: None,
            warnings_above: 0,
            quota_percent: default_quota_percent(),
        }
    }
}

impl AlertSettings {
    /// Check what an admin set, so that a mistake shows at once rather than at the first
    /// alert.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ServerError::Invalid(m));
        if let Some(s) = &self.smtp {
            if !matches!(s.tls.as_str(), "starttls" | "tls" | "none") {
                return bad(format!("SMTP TLS mode {:?}: starttls, tls or none", s.tls));
            }
            if s.host.is_empty() {
                return bad("SMTP host is empty".into());
            }
            if self.mail_from.is_none() {
                return bad("email alerts need a sender address (--from)".into());
            }
        }
        for a in self.mail_from.iter().chain(&self.mail_to) {
            if a.parse::<Mailbox>().is_err() {
                return bad(format!("email address {a:?} is not valid"));
            }
        }
        for w in &self.webhooks {
            if !(w.starts_with("https://") || w.starts_with("http://")) {
                return bad(format!("webhook {w:?}: an http:// or https:// URL"));
            }
        }
        if let Some(t) = &self.digest_at {
            if parse_time_of_day(t).is_none() {
                return bad(format!("digest time {t:?}: HH:MM (UTC)"));
            }
        }
        if self.quota_percent == 0 || self.quota_percent > 100 {
            return bad("quota warning percentage: 1-100".into());
        }
        Ok(())
    }
}

/// `HH:MM` → (hours, minutes).
pub fn parse_time_of_day(s: &str) -> Option<(i64, i64)> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    ((0..24).contains(&h) && (0..60).contains(&m)).then_some((h, m))
}

pub fn load(catalog: &Catalog) -> Result<AlertSettings> {
    match catalog.setting("alerts")? {
        Some(j) => serde_json::from_str(&j).map_err(|e| ServerError::Catalog(format!("alert settings: {e}"))),
        None => Ok(AlertSettings::default()),
    }
}

pub fn save(catalog: &Catalog, s: &AlertSettings) -> Result<()> {
    s.validate()?;
    let j = serde_json::to_string(s).map_err(|e| ServerError::Catalog(e.to_string()))?;
    catalog.set_setting("alerts", Some(&j))
}

/// The SMTP password, if one is set.
pub fn smtp_password(catalog: &Catalog) -> Result<Option<Zeroizing<String>>> {
    Ok(catalog.setting("smtp_password")?.map(Zeroizing::new))
}

fn incident_title(inc: &Incident) -> String {
    let what = match inc.kind.as_str() {
        "failed" => "FAILED",
        "check" => "CHECK FAILED",
        "drill" => "DRILL FAILED",
        "overdue" => "OVERDUE",
        "warnings" => "WARNINGS",
        "damage" => "DAMAGED",
        "quota" => "QUOTA",
        // files changed at many times the usual rate, the new data incompressible: files
        // encrypted in place (server retention for the client waits until acknowledged)
        "anomaly" => "ANOMALY",
        _ => "PROBLEM",
    };
    match inc.closed {
        None => format!("coffer: {what} {}", inc.subject),
        Some(_) => format!(
            "coffer: RECOVERED {} ({} cleared)",
            inc.subject,
            what.to_lowercase()
        ),
    }
}

/// Queue the alert for an incident that opened, or the recovery notice for one that closed.
pub fn incident(server: &Server, s: &AlertSettings, inc: &Incident, now: i64) -> Result<()> {
    let title = incident_title(inc);
    let text = match inc.closed {
        None => format!("{}\n\n{}\nsince {}\n", title, inc.detail, fmt_time(inc.opened)),
        Some(c) => format!(
            "{}\n\nThe problem seen at {} has cleared at {}:\n{}\n",
            title,
            fmt_time(inc.opened),
            fmt_time(c),
            inc.detail
        ),
    };
    let json = serde_json::json!({
        "event": if inc.closed.is_none() { "incident" } else { "recovery" },
        "subject": inc.subject,
        "kind": inc.kind,
        "detail": inc.detail,
        "opened": inc.opened,
        "closed": inc.closed,
        "title": title,
        "text": text,
    });
    enqueue(server, s, now, &title, &text, &json)
}

/// Queue the daily digest.
pub fn digest(server: &Server, s: &AlertSettings, subject: &str, body: &str, now: i64) -> Result<()> {
    message(server, s, "digest", subject, body, now)
}

/// Queue a message of another kind (`event` in the webhook's JSON: `digest`, `test`).
pub fn message(
    server: &Server,
    s: &AlertSettings,
    event: &str,
    subject: &str,
    body: &str,
    now: i64,
) -> Result<()> {
    let json = serde_json::json!({
        "event": event,
        "title": subject,
        "text": body,
    });
    enqueue(server, s, now, subject, body, &json)
}

fn enqueue(
    server: &Server,
    s: &AlertSettings,
    now: i64,
    subject: &str,
    text: &str,
    json: &serde_json::Value,
) -> Result<()> {
    if s.smtp.is_some() && !s.mail_to.is_empty() {
        server
            .catalog
            .enqueue(now, "email", &s.mail_to.join(", "), subject, text)?;
    }
    for w in &s.webhooks {
        server
            .catalog
            .enqueue(now, "webhook", w, subject, &json.to_string())?;
    }
    Ok(())
}

/// Try every message that is due; returns how many went out. Webhooks are sent on `rt`.
pub fn deliver(server: &Server, rt: &tokio::runtime::Handle) -> Result<usize> {
    let now = server.now();
    let due = server.catalog.due_messages(now)?;
    if due.is_empty() {
        return Ok(0);
    }
    let settings = load(&server.catalog)?;
    // one HTTP client (and one read of the system's CA certificates) per delivery round
    let mut http: Option<std::result::Result<reqwest::Client, String>> = None;
    let mut sent = 0;
    for m in due {
        if !server.catalog.claim_message(m.id, now, now + 300)? {
            continue;
        }
        let r = match m.channel.as_str() {
            "email" => send_email(&server.catalog, &settings, &m),
            "webhook" => match http.get_or_insert_with(webhook_client) {
                Ok(c) => rt.block_on(post_webhook(c, &m)),
                Err(e) => Err(e.clone()),
            },
            other => Err(format!("unknown channel {other:?}")),
        };
        match r {
            Ok(()) => {
                server.catalog.message_sent(m.id, now)?;
                sent += 1;
            }
            Err(e) => {
                // 30 s, doubling, at most an hour apart; for about a day
                let retry = (m.attempts < 30).then(|| now + (30i64 << m.attempts.min(7)).min(3600));
                tracing::warn!(
                    "alert {} to {} not delivered (attempt {}): {}",
                    m.channel,
                    m.target,
                    m.attempts + 1,
                    e.to_string().escape_debug()
                );
                server.catalog.message_failed(m.id, now, retry, &e)?;
            }
        }
    }
    Ok(sent)
}

fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

fn send_email(catalog: &Catalog, s: &AlertSettings, m: &OutboxItem) -> std::result::Result<(), String> {
    let smtp = s
        .smtp
        .as_ref()
        .ok_or("email alerts are off (no SMTP server set)")?;
    let from: Mailbox = s
        .mail_from
        .as_deref()
        .ok_or("no sender address")?
        .parse()
        .map_err(|e| format!("sender: {e}"))?;
    let mut b = Message::builder().from(from).subject(&m.subject);
    for to in m.target.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        b = b.to(to.parse().map_err(|e| format!("recipient {to:?}: {e}"))?);
    }
    let msg = b.body(m.body.clone()).map_err(|e| e.to_string())?;
    let tls = match smtp.tls.as_str() {
        "none" => Tls::None,
        mode => {
            let mut b = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = &smtp.cacert {
                let pem = std::fs::read(ca).map_err(|e| format!("SMTP CA certificate {ca}: {e}"))?;
                b = b.add_root_certificate(
                    Certificate::from_pem(&pem).map_err(|e| format!("SMTP CA certificate {ca}: {e}"))?,
                );
            }
            let p = b.build_rustls().map_err(|e| e.to_string())?;
            if mode == "tls" {
                Tls::Wrapper(p)
            } else {
                Tls::Required(p)
            }
        }
    };
    let mut t = SmtpTransport::builder_dangerous(&smtp.host)
        .port(smtp.port)
        .tls(tls)
        .hello_name(ClientId::Domain(hostname()))
        .timeout(Some(Duration::from_secs(30)));
    if let Some(user) = &smtp.user {
        let pw = smtp_password(catalog)
            .map_err(|e| e.to_string())?
            .ok_or("an SMTP user is set but no password")?;
        t = t.credentials(Credentials::new(user.clone(), pw.to_string()));
    }
    t.build().send(&msg).map(|_| ()).map_err(|e| e.to_string())
}

fn webhook_client() -> std::result::Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_preconfigured_tls(coffer_backends::tls_config(None)?)
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

async fn post_webhook(client: &reqwest::Client, m: &OutboxItem) -> std::result::Result<(), String> {
    let r = client
        .post(&m.target)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(m.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", r.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_incident_has_its_own_title() {
        let inc = |kind: &str, closed: Option<i64>| Incident {
            id: 1,
            subject: "web1".into(),
            kind: kind.into(),
            opened: 10,
            closed,
            detail: String::new(),
        };
        for (kind, title) in [
            ("failed", "coffer: FAILED web1"),
            ("check", "coffer: CHECK FAILED web1"),
            ("drill", "coffer: DRILL FAILED web1"),
            ("overdue", "coffer: OVERDUE web1"),
            ("warnings", "coffer: WARNINGS web1"),
            ("damage", "coffer: DAMAGED web1"),
            ("quota", "coffer: QUOTA web1"),
            ("anomaly", "coffer: ANOMALY web1"),
        ] {
            assert_eq!(incident_title(&inc(kind, None)), title);
        }
        assert_eq!(
            incident_title(&inc("anomaly", Some(20))),
            "coffer: RECOVERED web1 (anomaly cleared)"
        );
    }
}
