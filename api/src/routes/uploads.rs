//! Uploading files for media messages, and fetching them.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use parley_wire::payloads::Attachment;
use parley_wire::Right;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::extract::{Caller, Json, Path, Query, SignedIn};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// The file's name, shown to recipients.
    pub filename: Option<String>,
}

/// Upload a file (the raw bytes as the body, with its Content-Type). Send it with a
/// message of kind image, audio, video or file, naming its `id` as `attachment_id`.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads", params(UploadParams), security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 201, body = Attachment), (status = 413, description = "too large", body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    signed: SignedIn,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Attachment>), ApiError> {
    let user = signed.may(Right::Send)?.user;
    let body = body.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "too_large" } else { "invalid_body" };
        ApiError::new(status, code, e.body_text())
    })?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let content_type = content_type.split(';').next().unwrap_or("").trim();
    let attachment = state.domain.upload(user, content_type, params.filename, &body).await?;
    Ok((StatusCode::CREATED, Json(attachment)))
}

/// Fetch an upload: its owner, or a member of a conversation where it was sent.
#[utoipa::path(get, path = "/v1/uploads/{id}", tag = "uploads", params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, description = "the file's bytes"), (status = 404, body = ErrorResponse)))]
pub async fn fetch(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let (attachment, path) = state.domain.download(user, id).await?;
    let bytes =
        tokio::fs::read(&path).await.map_err(|e| ApiError::internal(&format!("reading {}: {e}", path.display())))?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&attachment.content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    let name = attachment.filename.unwrap_or_else(|| id.to_string()).replace('"', "");
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}
