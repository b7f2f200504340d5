//! Accounts and sign-ins: register and verify, log in (bearer tokens or browser
//! cookies), refresh, reset or change the password, log out here or everywhere,
//! and the list of signed-in devices.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use parley_domain::{Registration, Revoked, Session};
use parley_wire::{Role, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::cookies;
use crate::extract::{Client, Holder, Json, Path, SignedIn};
use crate::routes::users::MeView;
use crate::{ApiError, AppState, ErrorResponse};

/// A new account: at least one of username, email or phone, and a password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 3–32 letters, digits, `_` or `.`, starting with a letter; case-insensitive.
    pub username: Option<String>,
    /// A code is sent to it; logging in with it needs the code first.
    pub email: Option<String>,
    /// International format, e.g. `+15551234567`. A code is sent to it.
    pub phone: Option<String>,
    pub display_name: Option<String>,
    /// At least 8 characters.
    pub password: String,
    /// `user` (default) or `provider`.
    pub role: Option<Role>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    pub user: MeView,
    /// The email and phone a verification code was sent to.
    pub codes_sent: Vec<String>,
}

/// Log in with any of the account's identifiers.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username, email or phone.
    pub login: String,
    pub password: String,
    /// Browsers: set the tokens as HTTP-only cookies instead of returning them.
    #[serde(default)]
    pub cookie: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// Omit it when the refresh token is in the `parley_refresh` cookie (then send `X-CSRF-Token`).
    pub refresh_token: Option<String>,
    /// Answer with cookies (implied when the token came from the cookie).
    #[serde(default)]
    pub cookie: bool,
}

/// Tokens for a sign-in. Use the access token as `Authorization: Bearer …` and as
/// the MQTT password (with the user id as MQTT username). In cookie mode the tokens
/// are in cookies and only `csrf_token` is returned.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Single use: exchange it at `/v1/auth/refresh` for a new pair.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Cookie mode: echo it in `X-CSRF-Token` on unsafe requests (also readable in the `parley_csrf` cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// This sign-in (see `GET /v1/auth/sessions`).
    pub session_id: Uuid,
    pub user: MeView,
    /// For an institution's sign-in: the member acting for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<UserId>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The email or phone the code was sent to.
    pub identifier: String,
    /// Six digits.
    pub code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResendRequest {
    pub identifier: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotRequest {
    /// The account's email or phone.
    pub login: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    pub login: String,
    pub code: String,
    pub new_password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// The same answer whether or not the identifier belongs to an account.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedResponse {
    /// How many sign-ins ended; their devices are disconnected.
    pub revoked_sessions: usize,
}

/// One signed-in device.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    pub current: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

/// Register an account; codes go to its email and phone.
#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, body = RegisterResponse),
        (status = 403, description = "role_not_allowed", body = ErrorResponse),
        (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid field, weak password, channel_unavailable", body = ErrorResponse),
    ))]
pub async fn register(
    State(state): State<AppState>,
    Client(client): Client,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    let registration = Registration {
        username: req.username,
        email: req.email,
        phone: req.phone,
        display_name: req.display_name,
        password: req.password,
        role: req.role,
    };
    let done = state.domain.register(registration, &client).await?;
    Ok((StatusCode::CREATED, Json(RegisterResponse { user: done.user.into(), codes_sent: done.codes_sent })))
}

/// Confirm an email or phone with the code sent to it.
#[utoipa::path(post, path = "/v1/auth/verify", tag = "auth", request_body = VerifyRequest,
    responses((status = 200, body = MeView), (status = 422, description = "invalid_code", body = ErrorResponse)))]
pub async fn verify(State(state): State<AppState>, Json(req): Json<VerifyRequest>) -> Result<Json<MeView>, ApiError> {
    Ok(Json(state.domain.verify_identifier(&req.identifier, &req.code).await?.into()))
}

/// Send a new verification code (the previous one stops working).
#[utoipa::path(post, path = "/v1/auth/verify/resend", tag = "auth", request_body = ResendRequest,
    responses(
        (status = 202, body = Accepted),
        (status = 429, description = "too_many_codes", body = ErrorResponse),
    ))]
pub async fn resend(
    State(state): State<AppState>,
    Client(client): Client,
    Json(req): Json<ResendRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    state.domain.send_verification(&req.identifier, &client).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted { status: "if this identifier awaits verification, a code is on its way" }),
    ))
}

/// Log in with username, email or phone and password.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "invalid_credentials", body = ErrorResponse),
        (status = 403, description = "verification_required", body = ErrorResponse),
        (status = 429, description = "too_many_attempts", body = ErrorResponse),
    ))]
pub async fn login(
    State(state): State<AppState>,
    Client(client): Client,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let session = state.domain.login(&req.login, req.password, &client).await?;
    Ok(token_response(&state, session, req.cookie))
}

/// Exchange a refresh token for a new pair. The old one stops working; presenting
/// it again later revokes the sign-in (a retry within a short grace window is fine).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, body = TokenResponse),
        (status = 401, description = "invalid_refresh_token, refresh_token_reused", body = ErrorResponse),
        (status = 403, description = "csrf_failed", body = ErrorResponse),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<RefreshRequest>,
) -> Result<Response, ApiError> {
    let (token, cookie) = match req.refresh_token {
        Some(token) => (token, req.cookie),
        None => {
            let token = cookies::get(&headers, cookies::REFRESH)
                .ok_or_else(|| ApiError::unauthenticated("send refresh_token, or the parley_refresh cookie"))?;
            cookies::check_csrf(&axum::http::Method::POST, &headers)?;
            (token, true)
        }
    };
    match state.domain.refresh(&token).await {
        Ok(session) => Ok(token_response(&state, session, cookie)),
        Err((error, downlinks)) => {
            state.publish(downlinks).await;
            let mut response = ApiError::from(error).into_response();
            if cookie {
                cookies::clear(response.headers_mut(), state.cookie_secure);
            }
            Ok(response)
        }
    }
}

/// Ask for a password reset code (same answer whether or not the account exists).
#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", request_body = ForgotRequest,
    responses((status = 202, body = Accepted), (status = 429, description = "too_many_codes", body = ErrorResponse)))]
pub async fn forgot(
    State(state): State<AppState>,
    Client(client): Client,
    Json(req): Json<ForgotRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    state.domain.forgot_password(&req.login, &client).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted { status: "if this identifier belongs to an account, a code is on its way" }),
    ))
}

/// Set a new password with a reset code; every sign-in of the account ends.
#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", request_body = ResetRequest,
    responses((status = 200, body = RevokedResponse), (status = 422, description = "invalid_code, weak_password", body = ErrorResponse)))]
pub async fn reset(
    State(state): State<AppState>,
    Json(req): Json<ResetRequest>,
) -> Result<Json<RevokedResponse>, ApiError> {
    let revoked = state.domain.reset_password(&req.login, &req.code, req.new_password).await?;
    Ok(Json(published(&state, revoked).await))
}

/// Change the password; every other sign-in ends.
#[utoipa::path(post, path = "/v1/auth/password", tag = "auth", request_body = ChangePasswordRequest, security(("bearer" = [])),
    responses((status = 200, body = RevokedResponse), (status = 401, description = "invalid_credentials", body = ErrorResponse)))]
pub async fn change_password(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Json(req): Json<ChangePasswordRequest>,
) -> Result<Json<RevokedResponse>, ApiError> {
    let (current, new) = (req.current_password, req.new_password);
    let revoked = state.domain.change_password(signed_in.user, signed_in.session, current, new, &client).await?;
    Ok(Json(published(&state, revoked).await))
}

/// End this sign-in (its refresh token stops working and its devices are disconnected).
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = RevokedResponse), (status = 401, body = ErrorResponse)))]
pub async fn logout(State(state): State<AppState>, signed_in: SignedIn) -> Result<Response, ApiError> {
    // A device's sign-in belongs to its secret; its administrator renews or retires it.
    let signed_in = signed_in.person()?;
    let revoked = state.domain.revoke_sessions(signed_in.user, Some(signed_in.session), None, "signed_out").await?;
    let mut response = Json(published(&state, revoked).await).into_response();
    cookies::clear(response.headers_mut(), state.cookie_secure);
    Ok(response)
}

/// End every sign-in of the account, this one included.
#[utoipa::path(post, path = "/v1/auth/logout-all", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = RevokedResponse), (status = 401, body = ErrorResponse)))]
pub async fn logout_all(State(state): State<AppState>, Holder(signed_in): Holder) -> Result<Response, ApiError> {
    let revoked = state.domain.revoke_sessions(signed_in.user, None, None, "signed_out_everywhere").await?;
    let mut response = Json(published(&state, revoked).await).into_response();
    cookies::clear(response.headers_mut(), state.cookie_secure);
    Ok(response)
}

/// The account's live sign-ins, newest first.
#[utoipa::path(get, path = "/v1/auth/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = SessionList), (status = 401, body = ErrorResponse)))]
pub async fn sessions(State(state): State<AppState>, Holder(signed_in): Holder) -> Result<Json<SessionList>, ApiError> {
    let sessions = state.domain.sessions(signed_in.user).await?;
    let sessions = sessions
        .into_iter()
        .map(|s| SessionView {
            current: s.id == signed_in.session,
            id: s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            user_agent: s.user_agent,
            client_addr: s.client_addr,
        })
        .collect();
    Ok(Json(SessionList { sessions }))
}

/// End one sign-in of the account (a lost phone, say).
#[utoipa::path(delete, path = "/v1/auth/sessions/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = RevokedResponse), (status = 404, description = "session_not_found", body = ErrorResponse)))]
pub async fn end_session(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<Uuid>,
) -> Result<Json<RevokedResponse>, ApiError> {
    let revoked = state.domain.revoke_session(signed_in.user, id).await?;
    Ok(Json(published(&state, revoked).await))
}

pub(crate) async fn published(state: &AppState, revoked: Revoked) -> RevokedResponse {
    state.publish(revoked.downlinks).await;
    RevokedResponse { revoked_sessions: revoked.count }
}

/// The answer to a login or refresh: tokens in the body, or (`cookie`) in cookies
/// with only the CSRF token in the body.
pub(crate) fn token_response(state: &AppState, s: Session, cookie: bool) -> Response {
    let mut headers = HeaderMap::new();
    let (access_token, refresh_token, csrf_token) = if cookie {
        let refresh_secs = state.domain.tokens().settings().refresh_ttl.as_secs();
        let csrf = cookies::issue(
            &mut headers,
            &s.access_token,
            s.expires_in,
            &s.refresh_token,
            refresh_secs,
            state.cookie_secure,
        );
        (None, None, Some(csrf))
    } else {
        (Some(s.access_token), Some(s.refresh_token), None)
    };
    let body = TokenResponse {
        access_token,
        token_type: "Bearer",
        expires_in: s.expires_in,
        refresh_token,
        csrf_token,
        session_id: s.session_id,
        user: s.user.into(),
        actor: s.actor,
    };
    (headers, Json(body)).into_response()
}
