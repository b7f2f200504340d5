//! Extractors whose failures are [`ApiError`]s, and the authenticated caller.

use axum::extract::{FromRequest, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use parley_wire::UserId;

use crate::{ApiError, AppState};

/// `axum::Json`, with errors in the API's shape.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query`, with errors in the API's shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path`, with errors in the API's shape.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// The caller, proven by `Authorization: Bearer <access token>`.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub UserId);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("an Authorization: Bearer access token is required"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .ok_or_else(|| ApiError::unauthenticated("the Authorization header must be 'Bearer <token>'"))?;
        let claims = state
            .domain
            .tokens()
            .verify_access(token.trim())
            .map_err(|e| ApiError::unauthenticated(format!("access token refused: {e}")))?;
        let user = claims.user().map_err(|_| ApiError::unauthenticated("access token names no user"))?;
        Ok(Caller(user))
    }
}
