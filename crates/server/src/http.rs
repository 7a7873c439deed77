//! The HTTP API (over TLS) and the accept loop.
//!
//! ```text
//! GET    /                          health: "coffer-server VERSION"
//! POST   /REPO                      create the repository layout (Backend::create)
//! GET    /REPO/KIND/                list: JSON [{"name","size"}]
//! GET    /REPO/KIND/NAME            read (Range: bytes=A-B gives 206)
//! HEAD   /REPO/KIND/NAME            size in Content-Length and X-Coffer-Size
//! PUT    /REPO/KIND/NAME            create; 201 created, 409 exists (left untouched)
//! DELETE /REPO/KIND/NAME            admin only (append: leases only); into the trash
//! POST   /REPO/runs                 a run report (JSON, records::RunReport); any role
//! POST   /REPO/progress             a run's progress (JSON, coffer_wire::RunProgress); any role
//! GET    /REPO/hold                 whether the client's own retention waits (coffer_wire::RetentionHold)
//! GET    /metrics                   Prometheus text; HTTP Basic auth of a console operator
//! GET    /console...                the web console (crate::console)
//! ```
//! `KIND` is `keys`, `snapshots`, `index`, `data`, `locks`, `marks`, `manifests`; the config
//! is `/REPO/config`. Every request but the health check carries `Authorization: Bearer
//! TOKEN`; a token opens exactly one repository with one role. Errors are one line of text.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use coffer_core::FileKind;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::catalog::{ClientInfo, Role};
use crate::store::{self, Commit};
use crate::{Server, ServerError};

/// Limits on what clients may cost the server.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Uploads written at once; more wait their turn.
    pub max_uploads: usize,
    /// Uploads one client (token) may have in flight at once: a stolen token sending slowly
    /// cannot hold every slot.
    pub max_uploads_per_client: usize,
    /// The slowest an upload may arrive, on average (bytes per second): an upload has
    /// `idle_timeout` plus its length at this rate to complete, however it trickles.
    pub min_upload_rate: u64,
    /// Open connections; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// An upload that sends nothing for this long is aborted.
    pub idle_timeout: Duration,
    /// A request whose headers take longer than this is dropped.
    pub header_timeout: Duration,
    /// On shutdown, requests in flight get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uploads: 32,
            max_uploads_per_client: 8,
            min_upload_rate: 16 << 10,
            max_connections: 4096,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Key files an append token may add up to (admins: no limit).
const MAX_APPEND_KEYS: usize = 16;

pub(crate) struct AppState {
    pub(crate) server: Arc<Server>,
    uploads: Semaphore,
    /// Upload slots by client name (see [`Limits::max_uploads_per_client`]).
    client_uploads: std::sync::Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
    limits: Limits,
    /// Moves when a managed job or a run request may have changed (the catalog's agent
    /// counter, read once a second by one task while agents poll).
    agent_wake: tokio::sync::watch::Sender<i64>,
    agent_ticker: std::sync::Once,
    /// Polls waiting, by client: a stolen token cannot hold many connections this way.
    polls: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// Polls one client may have waiting at once.
const POLLS_PER_CLIENT: usize = 2;

/// Takes a waiting-poll slot of a client; gives it back when dropped.
struct PollSlot<'a> {
    st: &'a AppState,
    client: String,
}

impl Drop for PollSlot<'_> {
    fn drop(&mut self) {
        let mut p = self.st.polls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = p.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                p.remove(&self.client);
            }
        }
    }
}

pub(crate) type St = State<Arc<AppState>>;

/// An error answer: status and one line of text.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.0 == StatusCode::INTERNAL_SERVER_ERROR {
            // the detail (paths, storage errors) is for the server's log, not the client
            self.1 = crate::internal_error(&self.1);
        }
        let mut r = (self.0, format!("{}\n", self.1)).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // the message again in a header, for HEAD requests (which have no body)
        let ascii: String = self
            .1
            .chars()
            .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&ascii) {
            h.insert("x-coffer-error", v);
        }
        r
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        if let ServerError::Full(detail) = &e {
            return ApiError(StatusCode::INSUFFICIENT_STORAGE, crate::storage_full(detail));
        }
        let status = match &e {
            ServerError::Invalid(_) => StatusCode::BAD_REQUEST,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

pub(crate) fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

type ApiResult = Result<Response, ApiError>;

pub fn router(server: Arc<Server>, limits: Limits) -> Router {
    let state = Arc::new(AppState {
        server: server.clone(),
        uploads: Semaphore::new(limits.max_uploads),
        client_uploads: Default::default(),
        limits,
        agent_wake: tokio::sync::watch::channel(0).0,
        agent_ticker: std::sync::Once::new(),
        polls: Default::default(),
    });
    Router::new()
        .route("/", get(health))
        .route("/metrics", get(metrics))
        .route("/{repo}", post(create_repo))
        .route("/{repo}/runs", post(post_run))
        .route("/{repo}/progress", post(crate::live::post_progress))
        .route("/{repo}/hold", get(crate::hold::get_hold))
        .route("/{repo}/agent", get(agent_poll))
        .route("/{repo}/browse", post(post_browse))
        .route(
            "/{repo}/config",
            get(get_config)
                .head(head_config)
                .put(put_config)
                .delete(delete_config),
        )
        .route("/{repo}/{kind}/", get(list))
        .route(
            "/{repo}/{kind}/{name}",
            get(get_object)
                .head(head_object)
                .put(put_object)
                .delete(delete_object),
        )
        // bodies are streamed to disk with per-kind limits, never buffered
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
        .merge(crate::console::router(server))
}

/// A client reports a run: stored with the time it arrived, then the fleet is judged at
/// once (a failure alert goes out without waiting for the next monitoring round).
async fn post_run(
    State(st): St,
    UrlPath(repo): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = format!("/{repo}/runs");
    let client = authorize(&st, &headers, &repo, Need::Read, &Method::POST, &path).await?;
    let bytes = axum::body::to_bytes(body, crate::records::MAX_REPORT)
        .await
        .map_err(|_| err(StatusCode::PAYLOAD_TOO_LARGE, "a run report is at most 64 KiB"))?;
    let report: crate::records::RunReport = serde_json::from_slice(&bytes)
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("run report: {e}")))?;
    read_role_may_report(
        &Method::POST,
        &path,
        &client,
        &report.kind,
        report.status == crate::records::RunStatus::Failed,
    )?;
    let mut report = report.validated()?;
    let server = st.server.clone();
    let id = blocking(move || {
        let now = server.now();
        // A repository the server hosts: a successful backup must name a snapshot the server
        // received, or a stolen client could hide that backups stopped behind forged "ok"
        // reports. Such a report is recorded as a failure, which raises the alarm.
        if report.kind == "backup"
            && report.status != crate::records::RunStatus::Failed
            && server.catalog.snapshot_count(&repo)? > 0
        {
            // ... a snapshot this client uploaded, that no earlier report named: an old one
            // reported again would keep the fleet green after the backups stopped
            let problem = match &report.snapshot {
                None => Some("names no snapshot"),
                Some(s) => match server.catalog.snapshot_origin(&repo, s)? {
                    None => Some("names a snapshot this server never received (forged or lost report)"),
                    Some((_, Some(from))) if from != client.name => {
                        Some("names a snapshot another client uploaded (forged report)")
                    }
                    Some(_) => match server.catalog.snapshot_report(&repo, s)? {
                        // the same run's report again (a retry after a lost answer): that run
                        Some((id, from, started, finished))
                            if from == client.name
                                && started == report.started
                                && finished == report.finished =>
                        {
                            return Ok((id, false));
                        }
                        Some(_) => Some(
                            "names a snapshot an earlier report named already (forged or replayed report)",
                        ),
                        None => None,
                    },
                },
            };
            if let Some(p) = problem {
                report.status = crate::records::RunStatus::Failed;
                report.errors += 1;
                report.messages.insert(0, format!("the report {p}"));
            }
        }
        // the due time on the server's clock (the client's may be off)
        let skew = now - report.finished;
        report.next_expected = report.next_expected.map(|t| t.saturating_add(skew));
        let id = server.catalog.add_run(&client.name, &repo, now, &report)?;
        // a restore asked for from the console ends with its command's report
        if let Some(request) = report.request.filter(|_| report.kind.starts_with("restore")) {
            let message = report.messages.first().cloned().unwrap_or_default();
            server
                .catalog
                .restore_finished(&client.name, request, report.status, &message, id, now)?;
        }
        server
            .live
            .ended(&client.name, &report.kind, &report.job, report.started, now);
        crate::monitor::judge_backup(&server, &client.name, &repo, id, &report, now)?;
        crate::monitor::evaluate(&server, now)?;
        Ok((id, true))
    })
    .await?;
    let (id, new) = id;
    if new {
        let server = st.server.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = crate::notify::deliver(&server, &tokio::runtime::Handle::current()) {
                tracing::error!("alerts: {}", e.to_string().escape_debug());
            }
        });
    }
    Ok((StatusCode::CREATED, format!("run {id} recorded\n")).into_response())
}

/// An agent's listing of a snapshot's directory (`POST /REPO/browse`), answering a request
/// of the console: kept for the page that waits for it, if the request is this client's.
async fn post_browse(
    State(st): St,
    UrlPath(repo): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = format!("/{repo}/{}", coffer_wire::BROWSE_PATH);
    let client = authorize(&st, &headers, &repo, Need::Read, &Method::POST, &path).await?;
    if client.role == Role::Read {
        return Err(refuse(
            &Method::POST,
            &path,
            &client.name,
            err(
                StatusCode::FORBIDDEN,
                format!("client {:?} has role read, which takes no requests", client.name),
            ),
        ));
    }
    let bytes = axum::body::to_bytes(body, coffer_wire::BROWSE_MAX_BYTES)
        .await
        .map_err(|_| err(StatusCode::PAYLOAD_TOO_LARGE, "a listing is at most 2 MiB"))?;
    let answer: coffer_wire::BrowseAnswer =
        serde_json::from_slice(&bytes).map_err(|e| err(StatusCode::BAD_REQUEST, format!("listing: {e}")))?;
    if answer.entries.len() > coffer_wire::BROWSE_MAX_ENTRIES {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "a listing holds at most 2000 entries",
        ));
    }
    let server = st.server.clone();
    let name = client.name.clone();
    if blocking(move || server.catalog.browse_answered(&name, &answer)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(err(
            StatusCode::NOT_FOUND,
            "no listing of this client waits for that answer",
        ))
    }
}

/// An agent's poll (`GET /REPO/agent?since=G&wait=S`): the client's managed jobs when their
/// generation is not `since`, and the runs asked for; otherwise it waits up to `wait`
/// seconds (at most [`coffer_wire::POLL_WAIT_MAX_SECS`]) for either, then answers 204.
async fn agent_poll(
    State(st): St,
    UrlPath(repo): UrlPath<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> ApiResult {
    let path = format!("/{repo}/agent");
    let client = authorize(&st, &headers, &repo, Need::Read, &Method::GET, &path).await?;
    // the agent backs up: a read token (for restores) neither sees the jobs nor takes runs
    if client.role == Role::Read {
        return Err(refuse(
            &Method::GET,
            &path,
            &client.name,
            err(
                StatusCode::FORBIDDEN,
                format!("client {:?} has role read, which takes no jobs", client.name),
            ),
        ));
    }
    let mut since = None;
    let mut wait = 0u64;
    for (k, v) in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        match k {
            "since" => since = v.parse::<i64>().ok(),
            "wait" => wait = v.parse::<u64>().unwrap_or(0),
            _ => {}
        }
    }
    let since = since.ok_or_else(|| {
        err(
            StatusCode::BAD_REQUEST,
            "since=GENERATION is needed (-1 at first)",
        )
    })?;
    // waiting polls are bounded per client, and in all to half the connections (the rest
    // stay for backups and restores); past either, the answer comes at once
    let _slot = {
        let mut p = st.polls.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = p.values().sum();
        let mine = p.get(&client.name).copied().unwrap_or(0);
        if mine >= POLLS_PER_CLIENT || total >= st.limits.max_connections / 2 {
            wait = 0;
            None
        } else {
            *p.entry(client.name.clone()).or_default() += 1;
            Some(PollSlot {
                st: &st,
                client: client.name.clone(),
            })
        }
    };
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(wait.min(coffer_wire::POLL_WAIT_MAX_SECS));
    // one task reads the catalog's counter once a second and wakes the waiting polls
    st.agent_ticker.call_once(|| {
        let st = st.clone();
        tokio::spawn(async move {
            loop {
                let server = st.server.clone();
                if let Ok(Ok(seq)) = tokio::task::spawn_blocking(move || server.catalog.agent_seq()).await {
                    st.agent_wake
                        .send_if_modified(|v| std::mem::replace(v, seq) != seq);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    });
    // (subscribed before the catalog is read: a change in between still wakes this poll)
    let mut woken = st.agent_wake.subscribe();
    loop {
        let server = st.server.clone();
        let name = client.name.clone();
        let answer = blocking(move || server.catalog.agent_poll(&name, since, server.now())).await?;
        if let Some(a) = answer {
            let body =
                serde_json::to_vec(&a).map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        tokio::select! {
            _ = woken.changed() => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// Prometheus metrics, for a console operator (HTTP Basic auth).
async fn metrics(State(st): St, headers: HeaderMap) -> ApiResult {
    let creds = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b.trim()).ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let unauthorized = || {
        let mut r = err(
            StatusCode::UNAUTHORIZED,
            "metrics need a console operator's name and password (HTTP Basic auth)",
        )
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"coffer\""),
        );
        r
    };
    let Some((name, password)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return Ok(unauthorized());
    };
    let server = st.server.clone();
    let (name, password) = (name.to_string(), zeroize::Zeroizing::new(password.to_string()));
    let text = blocking(move || match server.check_operator(&name, &password)? {
        // the fleet's metrics are not a customer login's business
        crate::Login::Ok if server.catalog.operator_client(&name)?.flatten().is_some() => {
            Ok(Err(crate::Login::Wrong))
        }
        crate::Login::Ok => crate::monitor::metrics(&server, server.now()).map(Ok),
        other => Ok(Err(other)),
    })
    .await?;
    match text {
        Ok(t) => Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            t,
        )
            .into_response()),
        Err(crate::Login::Throttled) => Err(err(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed logins for this name; wait a minute",
        )),
        Err(_) => Ok(unauthorized()),
    }
}

async fn health() -> &'static str {
    concat!("coffer-server ", env!("CARGO_PKG_VERSION"), "\n")
}

/// What a request needs from its token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Read,
    Write(FileKind),
    Delete(FileKind),
}

/// Log a refused request (one line on stderr) and pass its error on.
pub(crate) fn refuse(method: &Method, path: &str, who: &str, e: ApiError) -> ApiError {
    // the path and names come from the request: escaped, so that a %0A cannot forge a line
    tracing::warn!(
        "refused {method} {} ({}): {}",
        path.escape_debug(),
        who.escape_debug(),
        e.1.escape_debug()
    );
    e
}

/// A read token reports what it can do (restore, check) and failures, never a successful
/// backup or deletion, nor one in progress: a stolen one must not keep a client green.
pub(crate) fn read_role_may_report(
    method: &Method,
    path: &str,
    client: &ClientInfo,
    kind: &str,
    failed: bool,
) -> Result<(), ApiError> {
    if client.role == Role::Read && !matches!(kind, "restore" | "check" | "drill") && !failed {
        return Err(refuse(
            method,
            path,
            &client.name,
            err(
                StatusCode::FORBIDDEN,
                format!(
                    "client {:?} has role read, which may report restore, check and drill runs and failures only",
                    client.name
                ),
            ),
        ));
    }
    Ok(())
}

/// Check the bearer token, the repository it opens and its role.
pub(crate) async fn authorize(
    st: &AppState,
    headers: &HeaderMap,
    repo: &str,
    need: Need,
    method: &Method,
    path: &str,
) -> Result<ClientInfo, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or("");
    if token.is_empty() {
        return Err(refuse(
            method,
            path,
            "no token",
            err(
                StatusCode::UNAUTHORIZED,
                "no token: send Authorization: Bearer TOKEN (COFFER_TOKEN)",
            ),
        ));
    }
    let server = st.server.clone();
    let token = token.to_string();
    let client = tokio::task::spawn_blocking(move || server.authenticate(&token))
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    let Some(client) = client else {
        return Err(refuse(
            method,
            path,
            "unknown token",
            err(
                StatusCode::UNAUTHORIZED,
                "unknown token (revoked, or never issued by this server)",
            ),
        ));
    };
    if client.repo != repo {
        return Err(refuse(
            method,
            path,
            &client.name,
            err(
                StatusCode::FORBIDDEN,
                format!("client {:?} has no access to repository {repo:?}", client.name),
            ),
        ));
    }
    // marks are written only by prune, which belongs to the server here: a mark an append
    // client could write would be read by every backup
    let allowed = matches!(
        (need, client.role),
        (_, Role::Admin) | (Need::Read, _) | (Need::Delete(FileKind::Lock), Role::Append)
    ) || (client.role == Role::Append && matches!(need, Need::Write(k) if k != FileKind::Mark));
    if !allowed {
        let what = match need {
            Need::Read => "read",
            Need::Write(_) => "write",
            Need::Delete(_) => "delete",
        };
        return Err(refuse(
            method,
            path,
            &client.name,
            err(
                StatusCode::FORBIDDEN,
                format!(
                    "client {:?} has role {}, which may not {what} here",
                    client.name,
                    client.role.as_str()
                ),
            ),
        ));
    }
    Ok(client)
}

fn parse_kind(kind: &str) -> Result<FileKind, ApiError> {
    store::kind_from_segment(kind).ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            format!("unknown object kind {kind:?} (keys, snapshots, index, data, locks, marks, manifests)"),
        )
    })
}

fn check_name(kind: FileKind, name: &str) -> Result<(), ApiError> {
    if store::valid_name(kind, name) {
        Ok(())
    } else {
        Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid object name {name:?} for {}: expected {} lowercase hex digits",
                store::kind_label(kind),
                if kind == FileKind::Lock { 48 } else { 64 }
            ),
        ))
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

async fn create_repo(State(st): St, UrlPath(repo): UrlPath<String>, headers: HeaderMap) -> ApiResult {
    let path = format!("/{repo}");
    authorize(
        &st,
        &headers,
        &repo,
        Need::Write(FileKind::Config),
        &Method::POST,
        &path,
    )
    .await?;
    let server = st.server.clone();
    let r = repo.clone();
    let exists = blocking(move || {
        server.store.prepare_repo(&r, false)?;
        Ok(server.store.stat(&r, FileKind::Config, "config")?.is_some())
    })
    .await?;
    if exists {
        return Err(err(
            StatusCode::CONFLICT,
            format!("repository {repo:?} exists already (it has a config)"),
        ));
    }
    Ok(StatusCode::CREATED.into_response())
}

async fn list(
    State(st): St,
    UrlPath((repo, kind)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let path = format!("/{repo}/{kind}/");
    authorize(&st, &headers, &repo, Need::Read, &Method::GET, &path).await?;
    let kind = parse_kind(&kind)?;
    let server = st.server.clone();
    let entries = blocking(move || server.store.list(&repo, kind)).await?;
    let v: Vec<serde_json::Value> = entries
        .into_iter()
        // (0: the storage did not say; sent as unknown, not as 1970)
        .map(|e| serde_json::json!({"name": e.name, "size": e.size, "mtime": (e.mtime > 0).then_some(e.mtime)}))
        .collect();
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Array(v).to_string(),
    )
        .into_response())
}

// ---- config: the same handlers with a fixed kind and name

async fn get_config(State(st): St, UrlPath(repo): UrlPath<String>, headers: HeaderMap) -> ApiResult {
    read(st, repo, FileKind::Config, "config".into(), headers, false).await
}
async fn head_config(State(st): St, UrlPath(repo): UrlPath<String>, headers: HeaderMap) -> ApiResult {
    read(st, repo, FileKind::Config, "config".into(), headers, true).await
}
async fn put_config(
    State(st): St,
    UrlPath(repo): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    write(st, repo, FileKind::Config, "config".into(), headers, body).await
}
async fn delete_config(State(st): St, UrlPath(repo): UrlPath<String>, headers: HeaderMap) -> ApiResult {
    delete(st, repo, FileKind::Config, "config".into(), headers).await
}

async fn get_object(
    State(st): St,
    UrlPath((repo, kind, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let kind = parse_kind(&kind)?;
    read(st, repo, kind, name, headers, false).await
}
async fn head_object(
    State(st): St,
    UrlPath((repo, kind, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let kind = parse_kind(&kind)?;
    read(st, repo, kind, name, headers, true).await
}
async fn put_object(
    State(st): St,
    UrlPath((repo, kind, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let kind = parse_kind(&kind)?;
    write(st, repo, kind, name, headers, body).await
}
async fn delete_object(
    State(st): St,
    UrlPath((repo, kind, name)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> ApiResult {
    let kind = parse_kind(&kind)?;
    delete(st, repo, kind, name, headers).await
}

fn object_path(repo: &str, kind: FileKind, name: &str) -> String {
    if kind == FileKind::Config {
        format!("/{repo}/config")
    } else {
        format!("/{repo}/{}/{name}", kind.dir())
    }
}

/// `bytes=A-B` (inclusive) or `bytes=A-`.
fn parse_range(h: &str, size: u64) -> Option<(u64, u64)> {
    let r = h.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end: u64 = if b.is_empty() {
        size.checked_sub(1)?
    } else {
        b.parse().ok()?
    };
    (start <= end && end < size).then_some((start, end - start + 1))
}

async fn read(
    st: Arc<AppState>,
    repo: String,
    kind: FileKind,
    name: String,
    headers: HeaderMap,
    head: bool,
) -> ApiResult {
    let path = object_path(&repo, kind, &name);
    let method = if head { Method::HEAD } else { Method::GET };
    authorize(&st, &headers, &repo, Need::Read, &method, &path).await?;
    check_name(kind, &name)?;
    let not_found = || err(StatusCode::NOT_FOUND, format!("{} not found", &path[1..]));
    // a local file streams from its descriptor; other storage in pieces
    let mut file = None;
    let size = match st.server.store.local_path(&repo, kind, &name) {
        Some(p) => {
            let f = match tokio::fs::File::open(&p).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
                Err(e) => return Err(err(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}"))),
            };
            let meta = f
                .metadata()
                .await
                .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}")))?;
            // (found out now, not after a 200 went out with a stream that breaks)
            if !meta.is_file() {
                return Err(err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{path}: {} is not a regular file", p.display()),
                ));
            }
            let size = meta.len();
            file = Some(f);
            size
        }
        None => {
            let server = st.server.clone();
            let (r2, n2) = (repo.clone(), name.clone());
            blocking(move || server.store.stat(&r2, kind, &n2))
                .await?
                .ok_or_else(not_found)?
                .size
        }
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, offset, len) = match range {
        None => (StatusCode::OK, 0, size),
        Some(r) => match parse_range(r, size) {
            Some((o, l)) => (StatusCode::PARTIAL_CONTENT, o, l),
            None => {
                return Err(err(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    format!("{}: range {r:?} is outside its {size} bytes", &path[1..]),
                ))
            }
        },
    };
    let mut resp = if head {
        Response::new(Body::empty())
    } else if let Some(mut f) = file {
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| err(StatusCode::INTERNAL_SERVER_ERROR, format!("{path}: {e}")))?;
        let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10);
        Response::new(Body::from_stream(stream))
    } else {
        Response::new(Body::from_stream(pieces(
            st.clone(),
            repo,
            kind,
            name,
            offset,
            len,
        )))
    };
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("x-coffer-size", HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {offset}-{}/{size}", offset + len - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

async fn write(
    st: Arc<AppState>,
    repo: String,
    kind: FileKind,
    name: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let path = object_path(&repo, kind, &name);
    let client = authorize(&st, &headers, &repo, Need::Write(kind), &Method::PUT, &path).await?;
    let who = client.name.clone();
    let refuse = |e: ApiError| refuse(&Method::PUT, &path, &who, e);
    check_name(kind, &name).map_err(refuse)?;
    let len: u64 = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| refuse(err(StatusCode::LENGTH_REQUIRED, "an upload needs Content-Length")))?;
    let max = store::max_size(kind);
    if len > max {
        return Err(refuse(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{}: {len} bytes is more than the {max} allowed for {}",
                &path[1..],
                store::kind_label(kind)
            ),
        )));
    }
    if let Err(e) = admit(&st, &repo, kind, &name, &path, len, &client).await {
        // read the announced body before answering: a client still sending it would
        // otherwise meet a reset connection and never see why it was refused
        drain(&st, body, len).await;
        // a name that exists already is the normal outcome of a deduplication race
        return Err(if e.0 == StatusCode::CONFLICT { e } else { refuse(e) });
    }
    // one client's slots first, then one of all: a client past its share waits without
    // holding a slot another client could use
    let mine = {
        let mut m = st.client_uploads.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(who.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(st.limits.max_uploads_per_client.max(1))))
            .clone()
    };
    // (bounded: a client that keeps more uploads waiting than it may send gets 503 and
    // retries, instead of parking requests on connections)
    let _client_permit = match tokio::time::timeout(st.limits.idle_timeout, mine.acquire_owned()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(err(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
        Err(_) => {
            drain(&st, body, len).await;
            return Err(refuse(err(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{who} has {} uploads in flight already; retry later",
                    st.limits.max_uploads_per_client
                ),
            )));
        }
    };
    let _permit = st
        .uploads
        .acquire()
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let tmp = st.server.store.incoming(&repo).join(format!(
        "{}-{}-{:016x}",
        store::kind_label(kind),
        &name[..name.len().min(16)],
        rand_u64()
    ));
    // however it trickles, an upload holds its slot for a bounded time
    let deadline = st.limits.idle_timeout + Duration::from_secs(len / st.limits.min_upload_rate.max(1));
    let result = match tokio::time::timeout(deadline, receive(&st, body, &tmp, len, kind, &repo, &name)).await
    {
        Ok(r) => r,
        Err(_) => Err(err(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "upload too slow: {len} bytes not received within {} s; aborted",
                deadline.as_secs()
            ),
        )),
    };
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(refuse(e));
    }
    let server = st.server.clone();
    let (r2, n2, t2, w2) = (repo.clone(), name.clone(), tmp.clone(), who.clone());
    let outcome = blocking(move || server.commit(&r2, kind, &n2, &t2, &w2)).await;
    let _ = tokio::fs::remove_file(&tmp).await;
    match outcome.map_err(refuse)? {
        Commit::Created => Ok(StatusCode::CREATED.into_response()),
        Commit::Existed => Err(err(
            StatusCode::CONFLICT,
            format!("{} exists already; left untouched (first write wins)", &path[1..]),
        )),
    }
}

/// The checks an upload passes before its body is read: the repository exists, the name is
/// free (first write wins), an append token's key count and the repository's quota.
async fn admit(
    st: &AppState,
    repo: &str,
    kind: FileKind,
    name: &str,
    path: &str,
    len: u64,
    client: &ClientInfo,
) -> Result<(), ApiError> {
    let role = client.role;
    let repo = repo.to_string();
    let server = st.server.clone();
    let (r2, n2, who) = (repo.clone(), name.to_string(), client.name.clone());
    let (exists, repo_known, quota, used, trashed) = blocking(move || {
        let info = server.catalog.repo(&r2)?;
        let exists = server.store.stat(&r2, kind, &n2)?.is_some();
        if exists && kind == FileKind::Snapshot && info.is_some() {
            // a retried commit whose catalog record failed the first time (the server
            // answered 500): the snapshot is stored, so it is recorded now (a no-op if it is)
            server.catalog.record_snapshot(&r2, &n2, server.now(), &who)?;
        }
        // a manifest is not named by its content: one stored under the name of a snapshot in
        // the trash would stand in for the manifest trashed with it
        let trashed = kind == FileKind::Manifest
            && !exists
            && (server.catalog.in_trash(&r2, "snapshots", &n2)?
                || server.catalog.in_trash(&r2, "manifests", &n2)?);
        let used = server.usage(&r2)?;
        Ok((
            exists,
            info.is_some(),
            info.and_then(|i| i.quota_bytes),
            used,
            trashed,
        ))
    })
    .await?;
    if !repo_known {
        return Err(err(StatusCode::NOT_FOUND, format!("no repository {repo:?}")));
    }
    if trashed {
        return Err(err(
            StatusCode::FORBIDDEN,
            format!(
                "{}: its snapshot is in the server's trash (an admin restores it with coffer server \
                 trash restore {repo} snapshots/{name}); refused",
                &path[1..]
            ),
        ));
    }
    if kind == FileKind::Key && role == Role::Append {
        // every open tries each key file (argon2, ~0.2 s each): a client that adds hundreds
        // would make every open slow
        let server = st.server.clone();
        let r2 = repo.clone();
        let keys = blocking(move || server.store.list(&r2, FileKind::Key))
            .await?
            .len();
        if keys >= MAX_APPEND_KEYS {
            return Err(err(
                StatusCode::FORBIDDEN,
                format!("repository {repo:?} has {keys} keys; an append token may add keys only below {MAX_APPEND_KEYS}"),
            ));
        }
    }
    if exists {
        return Err(err(
            StatusCode::CONFLICT,
            format!("{} exists already; left untouched (first write wins)", &path[1..]),
        ));
    }
    if let Some(q) = quota {
        if used.saturating_add(len) > q {
            return Err(err(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("repository {repo:?} is over its quota ({used} of {q} bytes used, upload of {len})"),
            ));
        }
    }
    Ok(())
}

/// Read and discard up to `len` bytes of a refused upload (bounded by the per-kind cap the
/// caller checked, and by the idle timeout).
async fn drain(st: &AppState, body: Body, len: u64) {
    let mut stream = body.into_data_stream();
    let mut got: u64 = 0;
    while got <= len {
        match tokio::time::timeout(st.limits.idle_timeout, stream.next()).await {
            Ok(Some(Ok(chunk))) => got += chunk.len() as u64,
            _ => break,
        }
    }
}

/// An object's bytes `offset..offset+len` from storage that is not a local file, read in
/// pieces on the blocking pool (one piece in memory at a time per response).
fn pieces(
    st: Arc<AppState>,
    repo: String,
    kind: FileKind,
    name: String,
    offset: u64,
    len: u64,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    const PIECE: u64 = 4 << 20;
    futures_util::stream::unfold(0u64, move |done| {
        let (st, repo, name) = (st.clone(), repo.clone(), name.clone());
        async move {
            if done >= len {
                return None;
            }
            let want = (len - done).min(PIECE) as u32;
            let at = offset + done;
            let got =
                tokio::task::spawn_blocking(move || st.server.store.read_range(&repo, kind, &name, at, want))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
            match got {
                Ok(b) if b.len() == want as usize => Some((Ok(bytes::Bytes::from(b)), done + want as u64)),
                Ok(b) => Some((
                    Err(std::io::Error::other(format!(
                        "storage returned {} of {want} bytes",
                        b.len()
                    ))),
                    len,
                )),
                // the response is cut short: the client sees a broken body and retries
                Err(e) => Some((Err(e), len)),
            }
        }
    })
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Stream the body into `tmp`, checking its length, its hash (content-addressed kinds) and
/// its form (manifests), then fsync it.
async fn receive(
    st: &AppState,
    body: Body,
    tmp: &PathBuf,
    len: u64,
    kind: FileKind,
    repo: &str,
    name: &str,
) -> Result<(), ApiError> {
    let ioe = |e: std::io::Error| {
        if crate::is_full(&e) {
            return err(
                StatusCode::INSUFFICIENT_STORAGE,
                crate::storage_full(&format!("storing an upload to {}: {e}", tmp.display())),
            );
        }
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing the upload: {e}"),
        )
    };
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .await
        .map_err(ioe)?;
    let mut hasher = blake3::Hasher::new();
    let mut got: u64 = 0;
    let mut small = Vec::new();
    let mut stream = body.into_data_stream();
    let started = tokio::time::Instant::now();
    loop {
        let next = tokio::time::timeout(st.limits.idle_timeout, stream.next())
            .await
            .map_err(|_| err(StatusCode::REQUEST_TIMEOUT, "upload stalled; aborted"))?;
        // past the idle timeout, the upload must keep up the minimum rate as it goes (not only
        // by its deadline, which a large declared length puts hours away)
        let late = started.elapsed().saturating_sub(st.limits.idle_timeout);
        if (got as f64) < st.limits.min_upload_rate as f64 * late.as_secs_f64() {
            return Err(err(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "upload too slow: {got} bytes in {} s, below {} bytes/s; aborted",
                    started.elapsed().as_secs(),
                    st.limits.min_upload_rate
                ),
            ));
        }
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| err(StatusCode::BAD_REQUEST, format!("upload broken off: {e}")))?;
        got += chunk.len() as u64;
        if got > len {
            return Err(err(
                StatusCode::BAD_REQUEST,
                "body longer than its Content-Length",
            ));
        }
        hasher.update(&chunk);
        if kind == FileKind::Manifest || (kind == FileKind::Parity && small.len() < PARITY_HEAD) {
            small.extend_from_slice(&chunk);
        }
        f.write_all(&chunk).await.map_err(ioe)?;
    }
    if got != len {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!("truncated upload: {got} of {len} bytes"),
        ));
    }
    if store::is_hashed(kind) {
        let h = hasher.finalize().to_hex();
        if h.as_str() != name {
            return Err(err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("content hashes to {h}, not to its name {name}: refused"),
            ));
        }
    }
    if kind == FileKind::Manifest {
        coffer_core::format::Manifest::decode(&small, name)
            .map_err(|e| err(StatusCode::UNPROCESSABLE_ENTITY, format!("manifests/{name}: {e}")))?;
    }
    if kind == FileKind::Parity {
        // what the header says must hold: the pack it names and the file's length (whether
        // its shards are right shows only against the pack: `verify` encodes it again)
        let refuse = |why: String| err(StatusCode::UNPROCESSABLE_ENTITY, format!("parity/{name}: {why}"));
        let pack = coffer_core::format::Id::from_hex(name)
            .map(coffer_core::format::PackId)
            .map_err(|e| refuse(e.to_string()))?;
        let h = coffer_core::parity::header(&pack, &small).map_err(|e| refuse(e.to_string()))?;
        if h.file_len() != got {
            return Err(refuse(format!("{got} bytes, its header says {}", h.file_len())));
        }
        // parity of a pack this server holds, of that pack's length (a writer uploads the
        // pack first): no parity files without a pack to fill the quota
        let (server, r, n) = (st.server.clone(), repo.to_string(), name.to_string());
        let stored = blocking(move || server.store.stat(&r, FileKind::Pack, &n)).await?;
        match stored {
            Some(e) if e.size == h.pack_len => {}
            Some(e) => {
                return Err(refuse(format!(
                    "it is for a {}-byte pack, the stored pack has {} bytes",
                    h.pack_len, e.size
                )))
            }
            None => {
                return Err(refuse(
                    "its pack is not stored here (upload the pack first)".into(),
                ))
            }
        }
    }
    // tokio writes in the background: the last write's error (a full disk) comes out of
    // `flush`, and `sync_all` would not report it; and the file must hold what came in
    f.flush().await.map_err(ioe)?;
    f.sync_all().await.map_err(ioe)?;
    let stored = f.metadata().await.map_err(ioe)?.len();
    if stored != len {
        return Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing the upload: {stored} of {len} bytes reached the disk"),
        ));
    }
    Ok(())
}

/// Bytes of a parity upload kept to check its header (1024 data and 1024 parity shards'
/// checks fit).
const PARITY_HEAD: usize = 64 << 10;

async fn delete(
    st: Arc<AppState>,
    repo: String,
    kind: FileKind,
    name: String,
    headers: HeaderMap,
) -> ApiResult {
    let path = object_path(&repo, kind, &name);
    let client = authorize(&st, &headers, &repo, Need::Delete(kind), &Method::DELETE, &path).await?;
    check_name(kind, &name)?;
    let server = st.server.clone();
    let reason = format!("deleted by client {}", client.name);
    let found = blocking(move || server.remove(&repo, kind, &name, &reason)).await?;
    if found {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(err(StatusCode::NOT_FOUND, format!("{} not found", &path[1..])))
    }
}

/// Serve until `shutdown` resolves, then stop accepting, give requests in flight
/// `limits.shutdown_grace` to finish and drop the rest (their uploads never land: an upload
/// becomes visible only by its final rename).
pub async fn serve(
    server: Arc<Server>,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let app = router(server, limits.clone());
    let conns = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = conns.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (tcp, _peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // small answers (range reads of one blob) must not wait for Nagle's algorithm and the
        // peer's delayed ACK: that cost ~15 ms per request
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let svc = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let header_timeout = limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await else {
                return;
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(tls), svc);
            let _ = watcher.watch(conn).await;
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!("requests still running after {:?}; dropped (their uploads did not land)", limits.shutdown_grace);
        }
    }
}
