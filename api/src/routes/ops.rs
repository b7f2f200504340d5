//! Liveness, readiness and the API's own description.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::extract::Json;
use crate::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unready`.
    pub status: &'static str,
    /// Each check: `ok` or why it failed.
    pub checks: BTreeMap<String, String>,
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the database answers, the bus carries a message round trip and, when
/// the gate runs in the same process, the gate answers a real MQTT CONNECT.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let mut checks = BTreeMap::new();
    let database = match state.domain.store().ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: database unreachable");
            "unreachable".to_string()
        }
    };
    checks.insert("database".to_string(), database);
    for (name, check) in state.readiness.iter() {
        let result = match check().await {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                tracing::warn!(check = name, error = %e, "readiness check failed");
                e
            }
        };
        checks.insert(name.to_string(), result);
    }
    let ready = checks.values().all(|v| v == "ok");
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { status: if ready { "ready" } else { "unready" }, checks }))
}

/// Counters of the parts running in this process, in the Prometheus text format:
/// for the gate, connections accepted and refused (by cause: rate, ban, handshake
/// failures and time-outs), malformed and oversized packets, refused publishes and
/// subscriptions, dropped deliveries, throttled connections, sessions.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.metrics.as_ref().map(|render| render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// The OpenAPI 3.1 document of this API.
pub async fn openapi() -> impl IntoResponse {
    axum::Json(crate::openapi::ApiDoc::openapi())
}

/// A browsable reference rendered from `/openapi.json` (the viewer script is loaded
/// by the browser from a public CDN).
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Parley API</title></head>
<body><script id="api-reference" data-url="/openapi.json"></script>
<script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
<noscript>The reference needs JavaScript; the raw document is at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body></html>"#,
    )
}
