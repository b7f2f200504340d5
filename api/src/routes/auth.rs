//! Accounts: register, log in, refresh, and the caller's own profile.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parley_domain::{Registration, Session};
use parley_wire::UserId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Caller, Json};
use crate::{ApiError, AppState, ErrorResponse};

/// A new account: at least one of username, email or phone, and a password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3–32 letters, digits, `_` or `.`, starting with a letter; case-insensitive.
    pub username: Option<String>,
    pub email: Option<String>,
    /// International format, e.g. `+15551234567`.
    pub phone: Option<String>,
    pub display_name: Option<String>,
    /// At least 8 characters.
    pub password: String,
}

/// Log in with any of the account's identifiers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username, email or phone.
    pub login: String,
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// An account as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: UserId,
    pub username: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub display_name: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<parley_domain::StoreUser> for UserView {
    fn from(u: parley_domain::StoreUser) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            phone: u.phone,
            display_name: u.display_name,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    pub user: UserView,
}

/// Tokens for a session. Use the access token as `Authorization: Bearer …` and as
/// the MQTT password (with the user id as MQTT username).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single use: exchange it at `/v1/auth/refresh` for a new pair.
    pub refresh_token: String,
    pub user: UserView,
}

impl From<Session> for TokenResponse {
    fn from(s: Session) -> Self {
        Self {
            access_token: s.access_token,
            token_type: "Bearer",
            expires_in: s.expires_in,
            refresh_token: s.refresh_token,
            user: s.user.into(),
        }
    }
}

/// Register an account.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, body = RegisterResponse),
        (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid field or weak password", body = ErrorResponse),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let user = state
        .domain
        .register(Registration {
            username: req.username,
            email: req.email,
            phone: req.phone,
            display_name: req.display_name,
            password: req.password,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(RegisterResponse { user: user.into() })))
}

/// Log in with username, email or phone and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "invalid_credentials", body = ErrorResponse),
    ))]
pub async fn login(
    State(state): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let session = state.domain.login(&req.login, req.password).await?;
    Ok(Json(session.into()))
}

/// Exchange a refresh token for a new access and refresh token; the old one stops working.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "invalid_refresh_token", body = ErrorResponse),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let session = state.domain.refresh(&req.refresh_token).await?;
    Ok(Json(session.into()))
}

/// The caller's own account.
#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = ErrorResponse)))]
pub async fn me(State(state): State<AppState>, Caller(user): Caller) -> Result<Json<UserView>, ApiError> {
    Ok(Json(state.domain.user(user).await?.into()))
}
