//! Changing how the caller logs in: a new email or phone (the password, then the
//! code sent to the new one), removing one (the password), and the username.

use axum::extract::State;
use axum::http::StatusCode;
use parley_domain::IdentifierKind;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Client, Holder, Json};
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsernameRequest {
    /// `null` removes it (when a proven email or phone remains).
    pub username: Option<String>,
}

async fn request(
    state: &AppState,
    Holder(signed_in): Holder,
    client: &parley_domain::ClientInfo,
    kind: IdentifierKind,
    req: ChangeRequest,
) -> Result<(StatusCode, Json<CodeSent>), ApiError> {
    let sent_to =
        state.domain.request_identifier_change(signed_in.user, kind, &req.value, req.password, client).await?;
    Ok((StatusCode::ACCEPTED, Json(CodeSent { sent_to })))
}

/// Start changing the email: a code goes to the new address.
#[utoipa::path(post, path = "/v1/me/email", tag = "profiles", request_body = ChangeRequest, security(("bearer" = [])),
    responses(
        (status = 202, body = CodeSent),
        (status = 401, description = "invalid_credentials (the password)", body = ErrorResponse),
        (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid_email, identifier_unchanged, channel_unavailable", body = ErrorResponse),
        (status = 429, description = "too_many_codes, too_many_attempts", body = ErrorResponse),
    ))]
pub async fn change_email(
    State(state): State<AppState>,
    holder: Holder,
    Client(client): Client,
    Json(req): Json<ChangeRequest>,
) -> Result<(StatusCode, Json<CodeSent>), ApiError> {
    request(&state, holder, &client, IdentifierKind::Email, req).await
}

/// Start changing the phone: a code goes to the new number.
#[utoipa::path(post, path = "/v1/me/phone", tag = "profiles", request_body = ChangeRequest, security(("bearer" = [])),
    responses(
        (status = 202, body = CodeSent),
        (status = 401, description = "invalid_credentials (the password)", body = ErrorResponse),
        (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid_phone, identifier_unchanged, channel_unavailable", body = ErrorResponse),
        (status = 429, description = "too_many_codes, too_many_attempts", body = ErrorResponse),
    ))]
pub async fn change_phone(
    State(state): State<AppState>,
    holder: Holder,
    Client(client): Client,
    Json(req): Json<ChangeRequest>,
) -> Result<(StatusCode, Json<CodeSent>), ApiError> {
    request(&state, holder, &client, IdentifierKind::Phone, req).await
}

/// Confirm the new email with its code; it replaces the old one.
#[utoipa::path(post, path = "/v1/me/email/verify", tag = "profiles", request_body = ConfirmRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid_code", body = ErrorResponse)))]
pub async fn confirm_email(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Json(req): Json<ConfirmRequest>,
) -> Result<Json<MeView>, ApiError> {
    let user = signed_in.user;
    Ok(Json(state.domain.confirm_identifier_change(user, IdentifierKind::Email, &req.value, &req.code).await?.into()))
}

/// Confirm the new phone with its code; it replaces the old one.
#[utoipa::path(post, path = "/v1/me/phone/verify", tag = "profiles", request_body = ConfirmRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 409, description = "identifier_taken", body = ErrorResponse),
        (status = 422, description = "invalid_code", body = ErrorResponse)))]
pub async fn confirm_phone(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Json(req): Json<ConfirmRequest>,
) -> Result<Json<MeView>, ApiError> {
    let user = signed_in.user;
    Ok(Json(state.domain.confirm_identifier_change(user, IdentifierKind::Phone, &req.value, &req.code).await?.into()))
}

/// Remove the email (a username or proven phone must remain).
#[utoipa::path(delete, path = "/v1/me/email", tag = "profiles", request_body = RemoveRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, description = "invalid_credentials", body = ErrorResponse),
        (status = 409, description = "last_identifier", body = ErrorResponse)))]
pub async fn remove_email(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Json(req): Json<RemoveRequest>,
) -> Result<Json<MeView>, ApiError> {
    let user = signed_in.user;
    Ok(Json(state.domain.remove_identifier(user, IdentifierKind::Email, req.password, &client).await?.into()))
}

/// Remove the phone (a username or proven email must remain).
#[utoipa::path(delete, path = "/v1/me/phone", tag = "profiles", request_body = RemoveRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, description = "invalid_credentials", body = ErrorResponse),
        (status = 409, description = "last_identifier", body = ErrorResponse)))]
pub async fn remove_phone(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Json(req): Json<RemoveRequest>,
) -> Result<Json<MeView>, ApiError> {
    let user = signed_in.user;
    Ok(Json(state.domain.remove_identifier(user, IdentifierKind::Phone, req.password, &client).await?.into()))
}

/// Set or remove the username.
#[utoipa::path(put, path = "/v1/me/username", tag = "profiles", request_body = UsernameRequest, security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 409, description = "identifier_taken, last_identifier", body = ErrorResponse),
        (status = 422, description = "invalid_username", body = ErrorResponse)))]
pub async fn set_username(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Json(req): Json<UsernameRequest>,
) -> Result<Json<MeView>, ApiError> {
    Ok(Json(state.domain.set_username(signed_in.user, req.username.as_deref(), &client).await?.into()))
}
