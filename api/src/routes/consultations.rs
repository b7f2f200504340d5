//! Consultations: a user asks a provider, the provider accepts, either side closes;
//! the caller's list. Each change also reaches both parties' devices on
//! `to/{uid}/consultation`.

use axum::extract::State;
use axum::http::StatusCode;
use parley_domain::{ConsultationCursor, ConsultationRecord};
use parley_wire::payloads::Consultation;
use parley_wire::UserId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::extract::{Caller, Json, Path, Query};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsultationRequest {
    /// A provider or institution account.
    pub provider_id: UserId,
    /// What the consultation is about (at most 1000 characters).
    pub note: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `requested`, `open` or `closed`; all when absent.
    pub status: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsultationList {
    pub consultations: Vec<Consultation>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(c: &ConsultationRecord) -> String {
    format!("{}_{}", c.created_at.timestamp_millis(), c.id)
}

fn decode_cursor(text: &str) -> Result<ConsultationCursor, ApiError> {
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", "cursor is not one this API returned");
    let (ms, id) = text.split_once('_').ok_or_else(bad)?;
    Ok(ConsultationCursor { created_at_ms: ms.parse().map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
}

/// Ask a provider or institution for a consultation (user accounts only).
#[utoipa::path(post, path = "/v1/consultations", tag = "consultations", request_body = ConsultationRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, body = Consultation),
        (status = 403, description = "users_only", body = ErrorResponse),
        (status = 404, description = "user_not_found", body = ErrorResponse),
        (status = 409, description = "consultation_exists: one is requested or open already", body = ErrorResponse),
        (status = 422, description = "not_a_provider, invalid_note", body = ErrorResponse),
    ))]
pub async fn request(
    State(state): State<AppState>,
    Caller(user): Caller,
    Json(req): Json<ConsultationRequest>,
) -> Result<(StatusCode, Json<Consultation>), ApiError> {
    let (consultation, downlinks) = state.domain.request_consultation(user, req.provider_id, req.note).await?;
    state.publish(downlinks).await;
    Ok((StatusCode::CREATED, Json((&consultation).into())))
}

/// The provider consulted (or an admin) accepts: the consultation opens, and the
/// parties' 1:1 conversation (context `consultation`) is named in `conversation_id`.
#[utoipa::path(post, path = "/v1/consultations/{id}/accept", tag = "consultations", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Consultation),
        (status = 403, description = "not_the_provider", body = ErrorResponse),
        (status = 404, description = "consultation_not_found", body = ErrorResponse),
        (status = 409, description = "invalid_transition: not requested any more", body = ErrorResponse),
    ))]
pub async fn accept(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Consultation>, ApiError> {
    let (consultation, downlinks) = state.domain.accept_consultation(user, id).await?;
    state.publish(downlinks).await;
    Ok(Json((&consultation).into()))
}

/// Either party (or an admin) closes a requested or open consultation.
#[utoipa::path(post, path = "/v1/consultations/{id}/close", tag = "consultations", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Consultation),
        (status = 404, description = "consultation_not_found", body = ErrorResponse),
        (status = 409, description = "invalid_transition: closed already", body = ErrorResponse),
    ))]
pub async fn close(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Consultation>, ApiError> {
    let (consultation, downlinks) = state.domain.close_consultation(user, id).await?;
    state.publish(downlinks).await;
    Ok(Json((&consultation).into()))
}

/// One consultation (its parties and admins).
#[utoipa::path(get, path = "/v1/consultations/{id}", tag = "consultations", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Consultation), (status = 404, description = "consultation_not_found", body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Consultation>, ApiError> {
    Ok(Json((&state.domain.consultation(user, id).await?).into()))
}

/// The caller's consultations, on either side, newest first.
#[utoipa::path(get, path = "/v1/consultations", tag = "consultations", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = ConsultationList), (status = 400, body = ErrorResponse),
        (status = 422, description = "invalid_status", body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(user): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<ConsultationList>, ApiError> {
    let cursor = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = params.limit.unwrap_or(50).clamp(1, 200);
    let page = state.domain.consultations(user, params.status.as_deref(), cursor, Some(limit)).await?;
    let next_cursor = (page.len() == limit as usize).then(|| page.last().map(encode_cursor)).flatten();
    Ok(Json(ConsultationList { consultations: page.iter().map(Into::into).collect(), next_cursor }))
}
