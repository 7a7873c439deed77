//! `GET /REPO/hold`: whether a client's own retention must wait. An ANOMALY (a run that looks
//! like files encrypted in place) pauses the server's retention of the repository until an
//! operator acknowledges it (`coffer server client ack`); this answer lets the client pause
//! the retention it applies itself (an off-site bucket it prunes) for the same reason.

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use coffer_wire::RetentionHold;

use crate::http::{authorize, blocking, ApiError, Need, St};

/// Any role may ask (the answer concerns the token's own client).
pub(crate) async fn get_hold(
    State(st): St,
    UrlPath(repo): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = format!("/{repo}/{}", coffer_wire::HOLD_PATH);
    let client = authorize(&st, &headers, &repo, Need::Read, &Method::GET, &path).await?;
    let server = st.server.clone();
    let open = blocking(move || server.catalog.open_anomalies(&client.name)).await?;
    let hold = match open.first() {
        None => RetentionHold::default(),
        Some((since, detail)) => RetentionHold {
            held: true,
            since: Some(*since),
            reason: detail.clone(),
        },
    };
    let json =
        serde_json::to_string(&hold).map_err(|e| ApiError::from(crate::ServerError::Io(e.to_string())))?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], json).into_response())
}
