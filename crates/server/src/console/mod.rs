//! The web console: server-rendered pages, no JavaScript, no CDN, readable on a phone.
//! Is every server backed up? The fleet page answers first (its heading is the digest's
//! subject line), worst first; a client page shows its run history, snapshots,
//! verification and incidents; the alert log shows what was sent.
//!
//! Console operators (`coffer server operator add NAME`) log in with their name and
//! generated password, or with a one-time link (`coffer server operator link NAME`, valid
//! 10 minutes). A session is a random 256-bit cookie (`HttpOnly; Secure; SameSite=Strict`,
//! stored hashed, 12 hours); every form carries the session's CSRF token and POSTs must come
//! from this origin. Pages show only what the server knows without a key: names, times,
//! sizes, states — never backup contents, file names or paths.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use coffer_core::human_bytes;
use serde::Deserialize;

use crate::monitor::{self, fmt_time, ClientStatus, State as CState};
use crate::records::RunStatus;
use crate::{token_hash, Result, Server, ServerError};

mod charts;
mod jobs;
mod restores;

use jobs::{jobs_section, JobsView};

const COOKIE: &str = "coffer_session";
const SESSION_SECS: i64 = 12 * 3600;
const LINK_SECS: i64 = 600;

type St = State<Arc<Server>>;

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/console", get(fleet_page))
        .route("/console/", get(fleet_page))
        .route("/console/login", get(login_page).post(login))
        .route("/console/link/{token}", get(link_login))
        .route("/console/logout", post(logout))
        .route("/console/client/{name}", get(client_page))
        .route("/console/client/{name}/run", post(jobs::run_now))
        .route("/console/client/{name}/new-job", get(jobs::new_job))
        .route("/console/client/{name}/jobs", post(jobs::save_job))
        .route("/console/client/{name}/jobs/{job}", get(jobs::edit_job))
        .route("/console/client/{name}/jobs/{job}/remove", post(jobs::remove_job))
        .route("/console/client/{name}/restore", post(restores::ask_restore))
        .route("/console/client/{name}/browse", get(restores::browse))
        .route("/console/alerts", get(alerts_page))
        .route("/console/style.css", get(style))
        .with_state(server)
}

fn random_token() -> Result<String> {
    use base64::Engine;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| ServerError::Io(format!("random token: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

impl Server {
    /// Start a console session for an operator; returns the cookie value.
    fn new_session(&self, operator: &str) -> Result<String> {
        let token = random_token()?;
        let csrf = random_token()?;
        let now = self.now();
        self.catalog.add_session(
            &token_hash(&token),
            operator,
            &csrf,
            "session",
            now,
            now + SESSION_SECS,
        )?;
        Ok(token)
    }

    /// A one-time login link's token for an operator (valid 10 minutes, single use).
    pub fn console_link(&self, operator: &str) -> Result<String> {
        if self.catalog.operator_hash(operator)?.is_none() {
            return Err(ServerError::NotFound(format!("no operator {operator:?}")));
        }
        let token = random_token()?;
        let now = self.now();
        self.catalog
            .add_session(&token_hash(&token), operator, "", "link", now, now + LINK_SECS)?;
        Ok(token)
    }

    /// Record the address operators reach the console at (`https://HOST:PORT`, no trailing
    /// slash), as the running server knows it: `DATA/url`, for `operator link` to print whole.
    pub fn record_url(&self, url: &str) -> Result<()> {
        let path = self.data.join("url");
        let tmp = self.data.join("url.tmp");
        let _ = std::fs::remove_file(&tmp);
        // in one step and synced: a cut must not leave an empty record
        coffer_backends::replace_file(&tmp, &path, format!("{}\n", url.trim_end_matches('/')).as_bytes())
            .map_err(|e| ServerError::Io(format!("{}: {e}", path.display())))
    }

    /// The address recorded by [`Server::record_url`], if the server has run.
    pub fn url(&self) -> Option<String> {
        let u = std::fs::read_to_string(self.data.join("url")).ok()?;
        let u = u.trim();
        u.starts_with("https://").then(|| u.to_string())
    }
}

/// A logged-in operator: name, the session's CSRF token, and the one client a limited login
/// (a hosting customer's) may see.
struct Who {
    operator: String,
    csrf: String,
    session_hash: String,
    only: Option<String>,
}

impl Who {
    /// Whether this login may see `client`.
    fn sees(&self, client: &str) -> bool {
        self.only.as_deref().is_none_or(|c| c == client)
    }

    /// For what only a fleet-wide login may do (jobs' forms, alerts): a limited login gets 403.
    fn fleet_only(&self) -> Option<Response> {
        self.only.as_ref().map(|c| {
            error_page(
                StatusCode::FORBIDDEN,
                &format!("this login sees client {c} only, and changes nothing"),
            )
        })
    }
}

/// Pages for operators take a `Who`: without a live session the request goes to the login
/// page instead.
impl axum::extract::FromRequestParts<Arc<Server>> for Who {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        server: &Arc<Server>,
    ) -> std::result::Result<Who, Response> {
        match who(server, &parts.headers).await {
            Ok(Some(w)) => Ok(w),
            Ok(None) => Err(redirect("/console/login")),
            Err(e) => Err(internal(e)),
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Io(e.to_string()))?
}

async fn who(server: &Arc<Server>, headers: &HeaderMap) -> Result<Option<Who>> {
    let Some(token) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    let s = server.clone();
    blocking(move || {
        let h = token_hash(&token);
        Ok(s.catalog
            .session(&h, "session", s.now())?
            .map(|(operator, csrf, only)| Who {
                operator,
                csrf,
                session_hash: h,
                only,
            }))
    })
    .await
}

/// Every page's headers: no caching, no framing, no scripts, nothing from elsewhere.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn html_response(status: StatusCode, html: String) -> Response {
    secure((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response())
}

fn redirect(to: &str) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    secure(r)
}

fn set_cookie(mut r: Response, value: &str, max_age: i64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/console; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

fn error_page(status: StatusCode, msg: &str) -> Response {
    html_response(
        status,
        page("coffer", None, &format!("<p class=\"error\">{}</p>", esc(msg))),
    )
}

fn internal(e: ServerError) -> Response {
    error_page(
        StatusCode::INTERNAL_SERVER_ERROR,
        &crate::internal_error(&e.to_string()),
    )
}

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encode a path segment (client names may hold any printable character).
fn seg(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn page(title: &str, who: Option<&Who>, body: &str) -> String {
    page_with(title, who, body, "")
}

/// [`page`] with more in its head (a refresh while a run is in progress: no script needed).
fn page_with(title: &str, who: Option<&Who>, body: &str, head: &str) -> String {
    let nav = match who {
        Some(w) => format!(
            "<nav>{}\
             <form method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Log out {}</button></form></nav>",
            match &w.only {
                None => "<a href=\"/console\">Fleet</a> <a href=\"/console/alerts\">Alerts</a>".to_string(),
                Some(c) => format!("<a href=\"/console/client/{}\">{}</a>", seg(c), esc(c)),
            },
            esc(&w.csrf),
            esc(&w.operator)
        ),
        None => String::new(),
    };
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/console/style.css\">{head}</head>\
         <body><header><span class=\"brand\">coffer</span>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    )
}

/// A table whose rows stack into labelled lines on a narrow screen (each cell carries its
/// column's heading as `data-label`; the style sheet shows it before the value there).
struct Table {
    html: String,
    /// Heading and class of each column ("opt": hidden on a phone; "lead": inline, no
    /// label; "problem": its own line, no label).
    cols: &'static [(&'static str, &'static str)],
}

impl Table {
    fn new(id: &str, cols: &'static [(&'static str, &'static str)]) -> Table {
        let mut html = format!("<div class=\"scroll\"><table id=\"{id}\" class=\"stack\"><thead><tr>");
        for (label, class) in cols {
            html.push_str(&format!("<th class=\"{class}\">{}</th>", esc(label)));
        }
        html.push_str("</tr></thead><tbody>");
        Table { html, cols }
    }

    /// One row: `attrs` for the `<tr>`, the cells as HTML (escaped by the caller).
    fn row(&mut self, attrs: &str, cells: &[String]) {
        debug_assert_eq!(cells.len(), self.cols.len(), "one cell per column");
        self.html.push_str(&format!("<tr{attrs}>"));
        for ((label, class), cell) in self.cols.iter().zip(cells) {
            if class.contains("lead") || class.contains("problem") {
                self.html.push_str(&format!("<td class=\"{class}\">{cell}</td>"));
            } else {
                self.html.push_str(&format!(
                    "<td class=\"{class}\" data-label=\"{}\">{cell}</td>",
                    esc(label)
                ));
            }
        }
        self.html.push_str("</tr>");
    }

    /// The table, with `empty` as its one line when it has no row.
    fn finish(mut self, rows: usize, empty: &str) -> String {
        if rows == 0 {
            self.html.push_str(&format!(
                "<tr><td colspan=\"{}\" class=\"muted\">{}</td></tr>",
                self.cols.len(),
                esc(empty)
            ));
        }
        self.html.push_str("</tbody></table></div>");
        self.html
    }
}

fn age(now: i64, t: i64) -> String {
    let d = (now - t).max(0);
    if d < 3600 {
        format!("{} min ago", d / 60)
    } else if d < 2 * 86_400 {
        format!("{} h ago", d / 3600)
    } else {
        format!("{} days ago", d / 86_400)
    }
}

fn state_class(s: CState) -> &'static str {
    match s {
        CState::Anomaly | CState::Failed => "failed",
        CState::Overdue => "overdue",
        CState::Warning => "warning",
        CState::Waiting => "waiting",
        CState::Ok => "ok",
    }
}

fn badge(s: CState) -> String {
    format!("<span class=\"badge {}\">{}</span>", state_class(s), s.label())
}

async fn style() -> Response {
    secure(
        (
            [
                (header::CONTENT_TYPE, "text/css; charset=utf-8"),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            STYLE,
        )
            .into_response(),
    )
}

const STYLE: &str = "\
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1b1f23;background:#f6f7f9}\
header{display:flex;flex-wrap:wrap;align-items:center;gap:1em;padding:.6em 1em;background:#1f2933;color:#fff}\
header a{color:#cfe3ff;margin-right:1em}.brand{font-weight:700;letter-spacing:.05em}\
nav{display:flex;flex-wrap:wrap;align-items:center;gap:.5em}nav form{display:inline;margin:0}\
button{font:inherit;padding:.3em .8em;border-radius:4px;border:1px solid #8a96a3;background:#fff;cursor:pointer}\
main{padding:1em;max-width:1200px;margin:auto}h1{font-size:1.4em;margin:.3em 0 .8em}h2{font-size:1.1em;margin-top:1.5em}\
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}\
th,td{text-align:left;padding:.45em .6em;border-bottom:1px solid #e4e7eb;vertical-align:top}th{background:#eef1f4;font-weight:600}\
td.num{text-align:right;white-space:nowrap}.scroll{overflow-x:auto}\
.badge{display:inline-block;padding:.1em .5em;border-radius:3px;font-weight:700;font-size:.85em;white-space:nowrap}\
.failed{background:#d64545;color:#fff}.overdue{background:#e8833a;color:#fff}.warning{background:#f7d070;color:#3b2f00}\
.waiting{background:#9aa5b1;color:#fff}.ok{background:#3f9142;color:#fff}\
.error{color:#b42318;font-weight:600}.muted{color:#616e7c}\
form.login{max-width:22em;background:#fff;padding:1em;box-shadow:0 1px 2px rgba(0,0,0,.08)}\
form.login label{display:block;margin:.5em 0}form.login input{width:100%;padding:.4em;font:inherit}\
form.job{max-width:44em}form.job fieldset{background:#fff;border:1px solid #e4e7eb;margin:0 0 1em;padding:.6em 1em}\
form.job legend{font-weight:600}form.job label{display:block;margin:.5em 0}form.job small{display:block;color:#616e7c}\
form.job input:not([type=checkbox]),form.job textarea{width:100%;padding:.4em;font:inherit}\
form.job label.num{display:inline-block;margin-right:1em}form.job label.num input{width:5em}\
form.inline{display:inline;margin:0}\
td{overflow-wrap:break-word}td.problem{overflow-wrap:anywhere;min-width:12em}\
svg.strip{display:block}div.charts{display:flex;flex-wrap:wrap;gap:1em;margin:.5em 0}\
svg.chart{width:22em;max-width:100%;height:6em}\
@media (max-width:700px){th.opt,td.opt{display:none}\
table.stack thead{display:none}table.stack,table.stack tbody,table.stack tr{display:block;width:100%}\
table.stack tr{padding:.4em 0;border-bottom:2px solid #d0d5db}\
table.stack td{display:block;border:0;padding:.15em .6em}table.stack td.lead{display:inline-block}\
table.stack td.num{text-align:left}table.stack td.problem:empty{display:none}\
table.stack td[data-label]::before{content:attr(data-label) \": \";color:#616e7c}}";

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

/// A POST must come from this origin (a browser sends `Origin` with every form POST).
fn same_origin(headers: &HeaderMap) -> bool {
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(o) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            o == format!("https://{host}")
        }
    }
}

/// A form POST that does not carry this session's CSRF token or comes from another origin
/// is refused (403) before anything is done.
fn form_refused(w: &Who, csrf: &str, headers: &HeaderMap) -> Option<Response> {
    (csrf != w.csrf || !same_origin(headers))
        .then(|| error_page(StatusCode::FORBIDDEN, "invalid form token; reload the page"))
}

async fn login_page(State(s): St, headers: HeaderMap) -> Response {
    match who(&s, &headers).await {
        Ok(Some(_)) => return redirect("/console"),
        Ok(None) => {}
        Err(e) => return internal(e),
    }
    html_response(StatusCode::OK, login_html(None))
}

fn login_html(error: Option<&str>) -> String {
    let err = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    page(
        "coffer: log in",
        None,
        &format!(
            "<h1>Log in</h1>{err}<form class=\"login\" method=\"post\" action=\"/console/login\">\
             <label>Operator <input name=\"name\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Log in</button></form>\
             <p class=\"muted\">Operators are added on the server: <code>coffer server operator add NAME</code>.</p>"
        ),
    )
}

async fn login(State(s): St, headers: HeaderMap, Form(f): Form<LoginForm>) -> Response {
    if !same_origin(&headers) {
        return error_page(StatusCode::FORBIDDEN, "cross-site request refused");
    }
    let server = s.clone();
    let password = zeroize::Zeroizing::new(f.password);
    let name = f.name;
    let r = blocking(move || match server.check_operator(&name, &password)? {
        crate::Login::Ok => server.new_session(&name).map(Ok),
        other => Ok(Err(other)),
    })
    .await;
    match r {
        Ok(Ok(token)) => set_cookie(redirect("/console"), &token, SESSION_SECS),
        Ok(Err(crate::Login::Throttled)) => html_response(
            StatusCode::TOO_MANY_REQUESTS,
            login_html(Some("Too many failed logins for this name; wait a minute.")),
        ),
        Ok(Err(_)) => html_response(
            StatusCode::UNAUTHORIZED,
            login_html(Some("Unknown operator or wrong password.")),
        ),
        Err(e) => internal(e),
    }
}

async fn link_login(State(s): St, UrlPath(token): UrlPath<String>) -> Response {
    let server = s.clone();
    let r = blocking(move || {
        let h = token_hash(&token);
        let Some((operator, _, _)) = server.catalog.session(&h, "link", server.now())? else {
            return Ok(None);
        };
        // single use
        server.catalog.delete_session(&h)?;
        server.new_session(&operator).map(Some)
    })
    .await;
    match r {
        Ok(Some(token)) => set_cookie(redirect("/console"), &token, SESSION_SECS),
        Ok(None) => error_page(
            StatusCode::UNAUTHORIZED,
            "This login link is unknown, used already or expired; make a new one with `coffer server operator link NAME`.",
        ),
        Err(e) => internal(e),
    }
}

async fn logout(State(s): St, w: Who, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Some(refused) = form_refused(&w, &f.csrf, &headers) {
        return refused;
    }
    let server = s.clone();
    if let Err(e) = blocking(move || server.catalog.delete_session(&w.session_hash)).await {
        return internal(e);
    }
    set_cookie(redirect("/console/login"), "", 0)
}

async fn fleet_page(State(s): St, w: Who) -> Response {
    let server = s.clone();
    let only = w.only.clone();
    let r = blocking(move || {
        let now = server.now();
        let mut fleet = monitor::fleet(&server, now)?;
        // a limited login sees its one client
        fleet.retain(|c| only.as_deref().is_none_or(|o| o == c.client.name));
        let mut ratios = std::collections::HashMap::new();
        for c in &fleet {
            if !ratios.contains_key(&c.client.repo) {
                let logical = server.catalog.logical_bytes(&c.client.repo)?;
                ratios.insert(c.client.repo.clone(), logical);
            }
        }
        let running = server.live.counts(now);
        let backups = server.catalog.backups_since(now - 31 * 86_400)?;
        let mut strips = std::collections::HashMap::new();
        for c in &fleet {
            let b = backups.get(&c.client.name).map_or(&[][..], Vec::as_slice);
            strips.insert(
                c.client.name.clone(),
                charts::day_strip(&charts::days(b, now, 30), now),
            );
        }
        Ok((now, fleet, ratios, running, strips))
    })
    .await;
    let (now, fleet, ratios, running, strips) = match r {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let subject = monitor::digest_subject(&fleet);
    let mut t = Table::new(
        "fleet",
        &[
            ("Client", "lead"),
            ("Status", "lead"),
            ("Last good backup", ""),
            ("Last 30 days", "strip"),
            ("Next expected", "opt"),
            ("Repository", "num"),
            ("Dedup", "num opt"),
            ("Problem", "problem"),
        ],
    );
    for c in &fleet {
        let logical = ratios.get(&c.client.repo).copied().unwrap_or(0);
        let ratio = if c.repo_bytes > 0 && logical > 0 {
            format!("{:.1}×", logical as f64 / c.repo_bytes as f64)
        } else {
            "–".into()
        };
        t.row(
            &format!(
                " data-client=\"{}\" data-state=\"{}\"",
                esc(&c.client.name),
                c.state.label()
            ),
            &[
                format!(
                    "<a href=\"/console/client/{}\">{}</a>{}",
                    seg(&c.client.name),
                    esc(&c.client.name),
                    match running.get(&c.client.name) {
                        Some(n) => format!(
                            " <span class=\"badge waiting\" title=\"runs in progress\">running{}</span>",
                            if *n > 1 { format!(" ×{n}") } else { String::new() }
                        ),
                        None => String::new(),
                    }
                ),
                badge(c.state),
                last_good(c, now),
                strips.get(&c.client.name).cloned().unwrap_or_default(),
                c.next_expected.map(fmt_time).unwrap_or_else(|| "–".into()),
                human_bytes(c.repo_bytes),
                ratio,
                esc(&c.problem_text()),
            ],
        );
    }
    let body = format!(
        "<h1 id=\"summary\">{}</h1><p class=\"muted\">{} · worst first</p>{}",
        esc(&subject),
        fmt_time(now),
        t.finish(
            fleet.len(),
            "No client has a schedule or has reported a backup yet."
        )
    );
    html_response(StatusCode::OK, page(&subject, Some(&w), &body))
}

fn last_good(c: &ClientStatus, now: i64) -> String {
    match &c.last_good {
        Some(r) => format!(
            "{} <span class=\"muted\">({})</span>",
            fmt_time(r.received),
            age(now, r.received)
        ),
        None => "never".into(),
    }
}

async fn client_page(State(s): St, w: Who, UrlPath(name): UrlPath<String>) -> Response {
    if !w.sees(&name) {
        return error_page(StatusCode::FORBIDDEN, "this login does not see that client");
    }
    let server = s.clone();
    let only = w.only.clone();
    let n2 = name.clone();
    let r = blocking(move || {
        let now = server.now();
        let Some(client) = server.catalog.client(&n2)? else {
            return Ok(None);
        };
        let status = monitor::fleet(&server, now)?
            .into_iter()
            .find(|c| c.client.name == n2);
        let runs = server.catalog.runs(&n2, None, 50)?;
        let drills = server.catalog.runs(&n2, Some("drill"), 5)?;
        let mut snaps = server.catalog.snapshots(&client.repo, 50)?;
        if only.is_some() {
            // (a repository shared with other clients: a limited login sees its client's)
            snaps.retain(|(_, _, from)| from.as_deref() == Some(n2.as_str()));
        }
        let verify = server.catalog.last_verify_run(&client.repo)?;
        let mut incidents = server.catalog.incidents(Some(&n2), 20)?;
        incidents.extend(
            server
                .catalog
                .incidents(Some(&format!("repository {}", client.repo)), 20)?,
        );
        incidents.sort_by_key(|i| std::cmp::Reverse(i.opened));
        let restores = server.catalog.restore_requests(&n2, 10)?;
        let jobs = JobsView {
            managed: server.catalog.jobs(&n2)?.1,
            announced: server.catalog.announced(&n2)?,
            requests: server.catalog.run_requests(&n2, 10)?,
            live: server.live.of(&n2, now),
        };
        Ok(Some((
            now, client, status, runs, snaps, verify, incidents, jobs, drills, restores,
        )))
    })
    .await;
    let (now, client, status, runs, snaps, verify, incidents, jobs, drills, restores) = match r {
        Ok(Some(x)) => x,
        Ok(None) => return error_page(StatusCode::NOT_FOUND, &format!("no client {name:?}")),
        Err(e) => return internal(e),
    };
    let mut b = format!("<h1>{}</h1>", esc(&client.name));
    match &status {
        Some(c) => {
            b.push_str(&format!(
                "<p>{} · repository <b>{}</b> ({}) · last good backup {}</p>",
                badge(c.state),
                esc(&client.repo),
                human_bytes(c.repo_bytes),
                last_good(c, now)
            ));
            for p in &c.problems {
                b.push_str(&format!("<p class=\"error\">{}</p>", esc(&p.detail)));
            }
        }
        None => b.push_str(&format!(
            "<p class=\"muted\">Not monitored: no schedule and no backup reported (repository <b>{}</b>, role {}).</p>",
            esc(&client.repo),
            client.role.as_str()
        )),
    }
    b.push_str(&format!(
        "<p class=\"muted\">Expected: {}{}</p>",
        client
            .schedule
            .as_deref()
            .map(|s| format!("<code>{}</code> (UTC)", esc(s)))
            .unwrap_or_else(|| "no schedule".into()),
        if client.schedule.is_some() {
            format!(", grace {} min", client.grace_secs / 60)
        } else {
            String::new()
        }
    ));
    let running =
        jobs.live.iter().any(|l| now - l.heard < crate::live::SILENT_SECS) || restores::pending(&restores);
    b.push_str(&jobs_section(&client.name, &w, &jobs, &runs, now));
    b.push_str(&restores::restore_section(&client.name, &w, &snaps, &restores));
    let mut t = Table::new(
        "runs",
        &[
            ("Received", ""),
            ("Run", ""),
            ("Status", ""),
            ("Took", "num"),
            ("Files", "num opt"),
            ("Read", "num opt"),
            ("Added", "num"),
            ("Snapshot", "opt"),
            ("Host", "opt"),
            ("Message", "problem"),
        ],
    );
    for r in &runs {
        let st = match r.report.status {
            RunStatus::Ok => CState::Ok,
            RunStatus::Warning => CState::Warning,
            RunStatus::Failed => CState::Failed,
        };
        t.row(
            "",
            &[
                fmt_time(r.received),
                esc(&r.report.kind),
                format!(
                    "<span class=\"badge {}\">{}</span>",
                    state_class(st),
                    r.report.status.as_str()
                ),
                format!("{:.1} s", r.report.duration_ms as f64 / 1000.0),
                r.report.files.to_string(),
                human_bytes(r.report.bytes_read),
                human_bytes(r.report.bytes_added),
                format!(
                    "<code>{}</code>",
                    esc(r
                        .report
                        .snapshot
                        .as_deref()
                        .map(|s| &s[..s.len().min(8)])
                        .unwrap_or(""))
                ),
                esc(&r.report.host),
                esc(r.report.messages.first().map(String::as_str).unwrap_or("")),
            ],
        );
    }
    b.push_str("<h2>Runs</h2>");
    b.push_str(&charts::backups_over_time(&runs));
    b.push_str(&t.finish(runs.len(), "No run reported yet."));
    let mut t = Table::new("snapshots", &[("Snapshot", ""), ("Received", ""), ("From", "")]);
    for (id, received, from) in &snaps {
        t.row(
            "",
            &[
                format!("<code>{}</code>", esc(&id[..id.len().min(16)])),
                fmt_time(*received),
                esc(from.as_deref().unwrap_or("")),
            ],
        );
    }
    b.push_str("<h2>Snapshots</h2>");
    b.push_str(&t.finish(snaps.len(), "None."));
    b.push_str("<h2>Verification</h2>");
    match &verify {
        Some(v) => b.push_str(&format!(
            "<p>{} · {} objects, {} re-hashed · {}</p>",
            fmt_time(v.finished),
            v.objects,
            human_bytes(v.bytes),
            if v.damaged.is_empty() {
                "<span class=\"badge ok\">no damage</span>".to_string()
            } else {
                format!(
                    "<span class=\"badge failed\">{} DAMAGED</span> {}",
                    v.damaged.len(),
                    esc(&v.damaged.join("; "))
                )
            }
        )),
        None => b.push_str("<p class=\"muted\">Not verified yet.</p>"),
    }
    b.push_str(&drill_section(&drills, now));
    b.push_str(&incident_table(&incidents));
    // while a run is in progress the page follows it by itself
    let refresh = if running {
        format!(
            "<meta http-equiv=\"refresh\" content=\"{}\">",
            coffer_wire::PROGRESS_EVERY_SECS
        )
    } else {
        String::new()
    };
    html_response(
        StatusCode::OK,
        page_with(&format!("coffer: {}", client.name), Some(&w), &b, &refresh),
    )
}

/// The last restore drills: when, whether the sample came back as it was, and how long the
/// restore took (the recovery time measured on this client's data).
fn drill_section(drills: &[crate::records::Run], now: i64) -> String {
    let mut b = String::from("<h2>Restore drills</h2>");
    let Some(last) = drills.first() else {
        b.push_str(
            "<p class=\"muted\">No drill reported: a restore nobody tried is a hope (run <code>coffer drill</code> on the client, e.g. weekly).</p>",
        );
        return b;
    };
    let good = drills.iter().find(|r| r.report.status == RunStatus::Ok);
    b.push_str(&format!(
        "<p>Last drill {} ({}): {} · {} files verified · {} restored · recovery time <b>{:.1} s</b>{}</p>",
        fmt_time(last.received),
        age(now, last.received),
        if last.report.status == RunStatus::Ok {
            "<span class=\"badge ok\">passed</span>".to_string()
        } else {
            format!(
                "<span class=\"badge failed\">FAILED</span> {}",
                esc(last.report.messages.first().map(String::as_str).unwrap_or(""))
            )
        },
        last.report.files,
        human_bytes(last.report.bytes_read),
        last.report.duration_ms as f64 / 1000.0,
        match good {
            Some(g) if g.received != last.received => format!(
                " · last passed {} ({:.1} s)",
                fmt_time(g.received),
                g.report.duration_ms as f64 / 1000.0
            ),
            _ => String::new(),
        }
    ));
    b
}

fn incident_table(incidents: &[crate::records::Incident]) -> String {
    let mut t = Table::new(
        "incidents",
        &[
            ("Opened", ""),
            ("Cleared", ""),
            ("Subject", ""),
            ("Kind", ""),
            ("Detail", "problem"),
        ],
    );
    for i in incidents {
        t.row(
            "",
            &[
                fmt_time(i.opened),
                i.closed.map(fmt_time).unwrap_or_else(|| "<b>open</b>".into()),
                esc(&i.subject),
                esc(&i.kind),
                esc(&i.detail),
            ],
        );
    }
    format!("<h2>Incidents</h2>{}", t.finish(incidents.len(), "None."))
}

async fn alerts_page(State(s): St, w: Who) -> Response {
    if let Some(refused) = w.fleet_only() {
        return refused;
    }
    let server = s.clone();
    let r = blocking(move || {
        Ok((
            server.catalog.incidents(None, 100)?,
            server.catalog.messages(100)?,
        ))
    })
    .await;
    let (incidents, messages) = match r {
        Ok(x) => x,
        Err(e) => return internal(e),
    };
    let mut b = String::from("<h1>Alerts</h1>");
    b.push_str(&incident_table(&incidents));
    let mut t = Table::new(
        "messages",
        &[
            ("Queued", ""),
            ("Via", ""),
            ("To", ""),
            ("Subject", ""),
            ("Delivery", "problem"),
        ],
    );
    for m in &messages {
        let state = match (m.sent, m.failed) {
            (Some(t), _) => format!("sent {}", fmt_time(t)),
            (None, Some(_)) => format!(
                "<span class=\"error\">gave up: {}</span>",
                esc(m.last_error.as_deref().unwrap_or(""))
            ),
            (None, None) if m.attempts > 0 => format!(
                "retrying ({}): {}",
                m.attempts,
                esc(m.last_error.as_deref().unwrap_or(""))
            ),
            _ => "waiting".into(),
        };
        t.row(
            "",
            &[
                fmt_time(m.created),
                esc(&m.channel),
                esc(&m.target),
                esc(&m.subject),
                state,
            ],
        );
    }
    b.push_str("<h2>Messages</h2>");
    b.push_str(&t.finish(messages.len(), "None."));
    html_response(StatusCode::OK, page("coffer: alerts", Some(&w), &b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt;"
        );
        assert_eq!(seg("web 1/ä"), "web%201%2F%C3%A4");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; coffer_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        h.insert(header::HOST, HeaderValue::from_static("backup:8443"));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("https://backup:8443"));
        assert!(same_origin(&h));
    }
}
