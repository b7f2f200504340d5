//! Changing how the caller logs in: a new email or phone (the password, then the
//! code sent to the new one), removing one (the password), and the username.

use axum::extract::State;
use axum::http::StatusCode;
use parley_domain::IdentifierKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Client, Holder, Json, Path};
use crate::routes::users::MeView;
use crate::{ApiError, AppState, ErrorResponse};

/// A new email or phone, with the current password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRequest {
    /// The new email (at `/v1/me/email`) or phone (at `/v1/me/phone`).
    pub value: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CodeSent {
    /// Where the code went, normalised. The account keeps its old identifier until
    /// the code is confirmed.
    pub sent_to: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    pub value: String,
    /// The six digits sent to it.
    pub code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveRequest {
    pub password: String,
}

/// Which identifier a route changes.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    Phone,
}

impl From<Kind> for IdentifierKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::Email => IdentifierKind::Email,
            Kind::Phone => IdentifierKind::Phone,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsernameRequest {
    /// `null` removes it (when a proven email or phone remains).
    pub username: Option<String>,
}

/// Start changing the email or phone: a code goes to the new one; the account
/// keeps the old one until the code comes back.
#[utoipa::path(post, path = "/v1/me/{kind}", tag = "profiles", params(("kind" = Kind, Path)), request_body = ChangeRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, body = CodeSent),
        (status = 401, description = "invalid_credentials (the password)", body = ErrorResponse),
        (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid_email, invalid_phone, identifier_unchanged, channel_unavailable", body = ErrorResponse),
        (status = 429, description = "too_many_codes, too_many_attempts", body = ErrorResponse),
    ))]
pub async fn change(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Path(kind): Path<Kind>,
    Json(req): Json<ChangeRequest>,
) -> Result<(StatusCode, Json<CodeSent>), ApiError> {
    let user = signed_in.user;
    let sent_to = state.domain.request_identifier_change(user, kind.into(), &req.value, req.password, &client).await?;
    Ok((StatusCode::ACCEPTED, Json(CodeSent { sent_to })))
}

/// Confirm the new email or phone with its code; it replaces the old one, proven.
#[utoipa::path(post, path = "/v1/me/{kind}/verify", tag = "profiles", params(("kind" = Kind, Path)),
    request_body = ConfirmRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid_code", body = ErrorResponse)))]
pub async fn confirm(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(kind): Path<Kind>,
    Json(req): Json<ConfirmRequest>,
) -> Result<Json<MeView>, ApiError> {
    let user = signed_in.user;
    Ok(Json(state.domain.confirm_identifier_change(user, kind.into(), &req.value, &req.code).await?.into()))
}

/// Remove the email or phone (a username or another proven identifier must remain).
#[utoipa::path(delete, path = "/v1/me/{kind}", tag = "profiles", params(("kind" = Kind, Path)), request_body = RemoveRequest,
    security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, description = "invalid_credentials", body = ErrorResponse),
        (status = 409, description = "last_identifier", body = ErrorResponse)))]
pub async fn remove(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Path(kind): Path<Kind>,
    Json(req): Json<RemoveRequest>,
) -> Result<Json<MeView>, ApiError> {
    Ok(Json(state.domain.remove_identifier(signed_in.user, kind.into(), req.password, &client).await?.into()))
}

/// Set or remove the username.
#[utoipa::path(put, path = "/v1/me/username", tag = "profiles", request_body = UsernameRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 409, description = "identifier_taken, last_identifier", body = ErrorResponse),
        (status = 422, description = "invalid_username", body = ErrorResponse)))]
pub async fn set_username(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Json(req): Json<UsernameRequest>,
) -> Result<Json<MeView>, ApiError> {
    Ok(Json(state.domain.set_username(signed_in.user, req.username.as_deref()).await?.into()))
}
