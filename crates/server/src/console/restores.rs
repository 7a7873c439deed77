//! The client page's restores: a form that asks the client's agent to restore a path, a
//! database or a site, the table of restores asked for and what became of them, and a
//! snapshot browser whose listings the agent makes (it holds the key; the server relays).
//! Every form carries the session's CSRF token. A customer's login restores its own client
//! only, as it sees only that one.

use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use coffer_wire::RestoreItem;
use serde::Deserialize;

use super::jobs::known_client;
use super::{
    blocking, error_page, esc, form_refused, html_response, internal, page, redirect, seg, St, Table, Who,
};
use crate::monitor::fmt_time;
use crate::records::RunStatus;
use crate::restores::RestoreRequested;
use crate::ServerError;

/// How long the browser's page waits for the agent's listing.
const BROWSE_WAIT: Duration = Duration::from_secs(20);

fn what(r: &RestoreRequested) -> String {
    let (kind, name) = match &r.item {
        RestoreItem::Path(p) => ("path", p),
        RestoreItem::Mysql(n) => ("MariaDB database", n),
        RestoreItem::Postgres(n) => ("PostgreSQL database", n),
        RestoreItem::Site(n) => ("site", n),
    };
    format!("{kind} <code>{}</code>", esc(name))
}

fn where_to(r: &RestoreRequested) -> String {
    match (&r.item, r.in_place) {
        (_, true) => "in place".into(),
        (RestoreItem::Path(_), false) | (RestoreItem::Site(_), false) => {
            format!(
                "<span title=\"[managed] quarantine on the client; by default STATE_DIR/restores (/var/lib/coffer/restores for root)\">quarantine, folder <code>{}/</code></span>",
                r.id
            )
        }
        (_, false) => format!("new database <code>…_restored_{}</code>", r.id),
    }
}

/// The state of a restore asked for, as a badge and a line.
fn state(r: &RestoreRequested) -> String {
    match (r.taken, r.finished, r.status) {
        (None, _, _) => "<span class=\"badge unknown\">waiting for the agent</span>".into(),
        (Some(_), None, _) => "<span class=\"badge warning\">running</span>".into(),
        (_, Some(_), Some(s)) => {
            let class = match s {
                RunStatus::Ok => "ok",
                RunStatus::Warning => "warning",
                RunStatus::Failed => "failed",
            };
            let label = match s {
                RunStatus::Ok => "done",
                RunStatus::Warning => "done, with warnings",
                RunStatus::Failed => "failed",
            };
            format!(
                "<span class=\"badge {class}\">{label}</span> {}",
                esc(r.message.as_deref().unwrap_or(""))
            )
        }
        (_, Some(_), None) => "<span class=\"badge unknown\">ended</span>".into(),
    }
}

/// Whether any restore of the list is still under way (the page then follows it).
pub(super) fn pending(requests: &[RestoreRequested]) -> bool {
    requests.iter().any(|r| r.finished.is_none())
}

/// The Restore form and the restores asked for.
pub(super) fn restore_section(
    client: &str,
    w: &Who,
    snapshots: &[(String, i64, Option<String>)],
    requests: &[RestoreRequested],
) -> String {
    let mut b = String::from("<h2 id=\"restores\">Restore</h2>");
    b.push_str(&format!(
        "<p class=\"muted\">The client's agent restores with its own key: files into its quarantine directory, \
         databases under a new name, or in place where its configuration allows it (<code>[managed] restore = \
         \"in-place\"</code>). <a href=\"/console/client/{c}/browse?snapshot=latest&amp;path=%2F\">Browse the latest \
         snapshot</a> (file names then pass through this server).</p>",
        c = seg(client)
    ));
    let mut options = String::from("<option value=\"latest\">latest</option>");
    for (id, received, _) in snapshots.iter().take(30) {
        options.push_str(&format!(
            "<option value=\"{}\">{} ({})</option>",
            esc(id),
            esc(&id[..id.len().min(12)]),
            fmt_time(*received)
        ));
    }
    b.push_str(&format!(
        "<form class=\"job\" method=\"post\" action=\"/console/client/{c}/restore\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <label>Snapshot <select name=\"snapshot\">{options}</select></label>\
         <label>What <select name=\"kind\"><option value=\"path\">a file or directory</option>\
         <option value=\"mysql\">a MariaDB database</option><option value=\"postgres\">a PostgreSQL database</option>\
         <option value=\"site\">a site or cPanel account</option></select></label>\
         <label>Path or name <input name=\"name\" required placeholder=\"/var/www/shop or shop\"></label>\
         <label class=\"tick\"><input type=\"checkbox\" name=\"in_place\" value=\"yes\"> In place: overwrite the files, \
         replace the database (only if the client allows it)</label>\
         <p><button type=\"submit\">Restore</button></p></form>",
        c = seg(client),
        csrf = esc(&w.csrf),
    ));
    if !requests.is_empty() {
        let mut t = Table::new(
            "restores",
            &[
                ("Asked", ""),
                ("What", "lead"),
                ("Snapshot", "opt"),
                ("Where", ""),
                ("By", "opt"),
                ("State", "problem"),
            ],
        );
        for r in requests {
            t.row(
                &format!(" data-restore=\"{}\"", r.id),
                &[
                    fmt_time(r.requested),
                    what(r),
                    format!("<code>{}</code>", esc(&r.snapshot[..r.snapshot.len().min(12)])),
                    where_to(r),
                    esc(&r.by),
                    state(r),
                ],
            );
        }
        b.push_str("<h2>Restores asked for</h2>");
        b.push_str(&t.finish(requests.len(), ""));
    }
    b
}

#[derive(Deserialize)]
pub(super) struct RestoreForm {
    csrf: String,
    snapshot: String,
    kind: String,
    name: String,
    #[serde(default)]
    in_place: String,
}

/// `POST /console/client/NAME/restore`: ask the agent for a restore.
pub(super) async fn ask_restore(
    State(s): St,
    w: Who,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Form(f): Form<RestoreForm>,
) -> Response {
    if let Some(refused) = form_refused(&w, &f.csrf, &headers) {
        return refused;
    }
    if !w.sees(&name) {
        return error_page(StatusCode::FORBIDDEN, "this login does not see that client");
    }
    if let Some(r) = known_client(&s, &name).await {
        return r;
    }
    let n = f.name.trim().to_string();
    let item = match f.kind.as_str() {
        "path" => RestoreItem::Path(if n.len() > 1 {
            n.trim_end_matches('/').to_string()
        } else {
            n
        }),
        "mysql" => RestoreItem::Mysql(n),
        "postgres" => RestoreItem::Postgres(n),
        "site" => RestoreItem::Site(n),
        other => {
            return error_page(
                StatusCode::BAD_REQUEST,
                &format!("nothing asked: {other:?} is not a kind of restore (path, mysql, postgres or site)"),
            )
        }
    };
    let (server, n2, by) = (s.clone(), name.clone(), format!("{} (console)", w.operator));
    let in_place = f.in_place == "yes";
    let snapshot = f.snapshot.trim().to_string();
    let r = blocking(move || {
        server
            .catalog
            .request_restore(&n2, &snapshot, &item, in_place, &by, server.now())
    })
    .await;
    match r {
        Ok(id) => {
            tracing::info!(operator = %w.operator, client = %name.escape_debug(), request = id, in_place, "restore asked for in the console");
            redirect(&format!("/console/client/{}#restores", seg(&name)))
        }
        Err(ServerError::Invalid(m)) => error_page(StatusCode::BAD_REQUEST, &format!("nothing asked: {m}")),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
pub(super) struct BrowseQuery {
    #[serde(default = "latest")]
    snapshot: String,
    #[serde(default = "root")]
    path: String,
}

fn latest() -> String {
    "latest".into()
}

fn root() -> String {
    "/".into()
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// `GET /console/client/NAME/browse?snapshot=S&path=P`: one directory of a snapshot, as the
/// client's agent lists it (the page waits up to 20 s for it).
pub(super) async fn browse(
    State(s): St,
    w: Who,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<BrowseQuery>,
) -> Response {
    if !w.sees(&name) {
        return error_page(StatusCode::FORBIDDEN, "this login does not see that client");
    }
    // a GET that makes the agent work: only from the console's own pages (or typed), never
    // from another site's page (a customer's site on a sibling domain included)
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != "same-origin" && v != "none")
    {
        return error_page(
            StatusCode::FORBIDDEN,
            "a listing is asked for from the console's own pages only",
        );
    }
    if let Some(r) = known_client(&s, &name).await {
        return r;
    }
    let path = if q.path.len() > 1 {
        q.path.trim_end_matches('/').to_string()
    } else {
        q.path.clone()
    };
    let (server, n2, snap, p2) = (s.clone(), name.clone(), q.snapshot.clone(), path.clone());
    let id = match blocking(move || server.catalog.request_browse(&n2, &snap, &p2, server.now())).await {
        Ok(id) => id,
        Err(ServerError::Invalid(m)) => return error_page(StatusCode::BAD_REQUEST, &m),
        Err(e) => return internal(e),
    };
    let until = tokio::time::Instant::now() + BROWSE_WAIT;
    let answer = loop {
        let (server, n2) = (s.clone(), name.clone());
        match blocking(move || server.catalog.browse_answer(&n2, id)).await {
            Ok(Some(a)) => break Some(a),
            Ok(None) if tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(None) => break None,
            Err(e) => return internal(e),
        }
    };
    let c = seg(&name);
    let mut b = format!(
        "<h1><a href=\"/console/client/{c}\">{}</a>: snapshot {}</h1>",
        esc(&name),
        esc(&q.snapshot[..q.snapshot.len().min(12)])
    );
    // the path, each step a link
    let mut crumbs = format!(
        "<a href=\"/console/client/{c}/browse?snapshot={}&amp;path=%2F\">/</a>",
        seg(&q.snapshot)
    );
    let mut so_far = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        so_far.push('/');
        so_far.push_str(part);
        crumbs.push_str(&format!(
            " <a href=\"/console/client/{c}/browse?snapshot={}&amp;path={}\">{}</a> /",
            seg(&q.snapshot),
            seg(&so_far),
            esc(part)
        ));
    }
    b.push_str(&format!("<p>{crumbs}</p>"));
    let Some(a) = answer else {
        b.push_str(
            "<p class=\"error\">The client's agent did not answer within 20 s. Is <code>coffer agent</code> running \
             there, with a <code>[managed]</code> section naming this server?</p>",
        );
        return html_response(
            StatusCode::GATEWAY_TIMEOUT,
            page(&format!("coffer: {name}"), Some(&w), &b),
        );
    };
    if let Some(e) = &a.error {
        b.push_str(&format!("<p class=\"error\">The agent says: {}</p>", esc(e)));
        return html_response(StatusCode::OK, page(&format!("coffer: {name}"), Some(&w), &b));
    }
    // the snapshot the agent listed (a `latest` made definite: what is restored from here
    // is what is shown, whatever backup lands meanwhile)
    let snap = if coffer_wire::valid_snapshot(&a.snapshot) {
        a.snapshot.clone()
    } else {
        q.snapshot.clone()
    };
    b.push_str(&format!(
        "<p class=\"muted\">Snapshot <code>{}</code>. \"Restore\" puts a copy {}; the Restore form of the client page \
         restores in place.</p>",
        esc(&snap),
        "into the client's quarantine directory"
    ));
    let mut t = Table::new(
        "listing",
        &[
            ("Name", "lead"),
            ("Kind", "opt"),
            ("Size", "num"),
            ("Modified", "opt"),
            ("", ""),
        ],
    );
    for e in &a.entries {
        let full = join(&path, &e.name);
        let shown = if e.kind == "dir" {
            format!(
                "<a href=\"/console/client/{c}/browse?snapshot={}&amp;path={}\">{}/</a>",
                seg(&snap),
                seg(&full),
                esc(&e.name)
            )
        } else {
            esc(&e.name)
        };
        let button = format!(
            "<form class=\"inline\" method=\"post\" action=\"/console/client/{c}/restore\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"snapshot\" value=\"{}\">\
             <input type=\"hidden\" name=\"kind\" value=\"path\"><input type=\"hidden\" name=\"name\" value=\"{}\">\
             <button type=\"submit\">Restore</button></form>",
            esc(&w.csrf),
            esc(&snap),
            esc(&full)
        );
        t.row(
            &format!(" data-entry=\"{}\"", esc(&e.name)),
            &[
                shown,
                esc(&e.kind),
                if e.kind == "file" {
                    coffer_core::human_bytes(e.size)
                } else {
                    String::new()
                },
                fmt_time(e.mtime),
                button,
            ],
        );
    }
    b.push_str(&t.finish(a.entries.len(), "An empty directory."));
    if a.more > 0 {
        b.push_str(&format!(
            "<p class=\"muted\">{} more entries not shown (at most {} are).</p>",
            a.more,
            coffer_wire::BROWSE_MAX_ENTRIES
        ));
    }
    html_response(StatusCode::OK, page(&format!("coffer: {name}"), Some(&w), &b))
}
