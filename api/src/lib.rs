//! The HTTP API (axum): accounts, consultations, conversations and history, operations
//! endpoints and the OpenAPI document. Every route returns JSON, errors included.

pub mod cookies;
mod error;
pub mod extract;
pub mod openapi;
pub mod routes;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use parley_domain::Domain;
use parley_wire::payloads::Outgoing;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorResponse};

/// A named readiness check beyond the database (the bus round trip, …).
pub type ReadinessCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Hands what an HTTP action causes to the bus, for the users' devices.
pub type Publisher = Arc<dyn Fn(Vec<Outgoing>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub domain: Domain,
    pub readiness: Arc<Vec<(&'static str, ReadinessCheck)>>,
    pub publisher: Publisher,
    /// Mark auth cookies `Secure` (`auth.cookie_secure`).
    pub cookie_secure: bool,
    /// Take client addresses from `X-Forwarded-For` (`http.trust_forwarded_for`).
    pub trust_forwarded_for: bool,
    /// Metrics of the other parts in this process (the gate's), Prometheus text format.
    pub metrics: Option<MetricsSource>,
}

/// Renders metrics in the Prometheus text format.
pub type MetricsSource = Arc<dyn Fn() -> String + Send + Sync>;

impl AppState {
    /// Publishes downlinks caused by a request; an empty list costs nothing.
    pub async fn publish(&self, outgoing: Vec<Outgoing>) {
        if !outgoing.is_empty() {
            (self.publisher)(outgoing).await;
        }
    }
}

/// All routes, with JSON answers for unknown routes and methods.
pub fn router(state: AppState) -> Router {
    use axum::routing::patch;
    use axum::routing::put;
    use routes::{
        auth, consultations, contacts, conversations, devices, identifiers, institutions, members, messages, ops, sync,
        uploads, users,
    };
    let upload_limit = state.domain.limits().max_upload_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(ops::docs))
        .route("/v1/auth/register", post(auth::register))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/refresh", post(auth::refresh))
        .route("/v1/auth/verify", post(auth::verify))
        .route("/v1/auth/verify/resend", post(auth::resend))
        .route("/v1/auth/password", post(auth::change_password))
        .route("/v1/auth/password/forgot", post(auth::forgot))
        .route("/v1/auth/password/reset", post(auth::reset))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/logout-all", post(auth::logout_all))
        .route("/v1/auth/sessions", get(auth::sessions))
        .route("/v1/auth/sessions/{id}", axum::routing::delete(auth::end_session))
        .route("/v1/auth/device-token", post(devices::token))
        .route("/v1/me", get(users::me).patch(users::update_me))
        .route("/v1/me/{kind}", post(identifiers::change).delete(identifiers::remove))
        .route("/v1/me/{kind}/verify", post(identifiers::confirm))
        .route("/v1/me/username", put(identifiers::set_username))
        .route("/v1/me/institutions", get(institutions::mine))
        .route("/v1/institutions", post(institutions::create))
        .route("/v1/institutions/{id}", patch(institutions::update))
        .route("/v1/institutions/{id}/members", get(institutions::members).post(institutions::add_member))
        .route(
            "/v1/institutions/{id}/members/{user_id}",
            patch(institutions::set_member_role).delete(institutions::remove_member),
        )
        .route("/v1/institutions/{id}/sessions", post(institutions::act))
        .route("/v1/devices", get(devices::list).post(devices::provision))
        .route("/v1/devices/{id}", get(devices::get).patch(devices::update).delete(devices::retire))
        .route("/v1/devices/{id}/secret", post(devices::renew_secret))
        .route("/v1/users", get(users::search))
        .route("/v1/users/{id}", get(users::get))
        .route("/v1/admin/users/{id}", patch(users::admin_update))
        .route("/v1/contacts", get(contacts::list).post(contacts::request))
        .route("/v1/contacts/requests", get(contacts::requests))
        .route("/v1/contacts/{user_id}", axum::routing::delete(contacts::remove))
        .route("/v1/contacts/{user_id}/accept", post(contacts::accept))
        .route("/v1/contacts/{user_id}/decline", post(contacts::decline))
        .route("/v1/consultations", get(consultations::list).post(consultations::request))
        .route("/v1/consultations/{id}", get(consultations::get))
        .route("/v1/consultations/{id}/accept", post(consultations::accept))
        .route("/v1/consultations/{id}/close", post(consultations::close))
        .route("/v1/conversations", get(conversations::list).post(conversations::create))
        .route("/v1/conversations/{id}", get(conversations::get).patch(conversations::rename))
        .route("/v1/conversations/{id}/members", post(members::add))
        .route("/v1/conversations/{id}/members/{user_id}", patch(members::set_role).delete(members::remove))
        .route("/v1/conversations/{id}/messages", get(messages::history))
        .route("/v1/conversations/{id}/read", post(messages::mark_read))
        .route("/v1/conversations/{id}/settings", patch(conversations::settings))
        .route("/v1/messages/{id}", patch(messages::edit).delete(messages::delete))
        .route("/v1/messages/{id}/edits", get(messages::edits))
        .route("/v1/messages/{id}/receipts", get(messages::receipts))
        .route("/v1/messages/{id}/reactions", get(messages::reactions))
        .route("/v1/messages/{id}/reactions/{emoji}", axum::routing::put(messages::react).delete(messages::unreact))
        .route("/v1/sync", get(sync::sync))
        .route("/v1/unread", get(sync::unread))
        .route("/v1/presence", get(sync::presence))
        .route("/v1/search", get(sync::search))
        .route("/v1/uploads", post(uploads::create).layer(axum::extract::DefaultBodyLimit::max(upload_limit)))
        .route("/v1/uploads/{id}", get(uploads::fetch))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown`, letting requests in progress finish.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
