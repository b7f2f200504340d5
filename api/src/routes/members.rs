//! Group membership: add, remove (or leave), change roles.

use axum::extract::State;
use axum::http::StatusCode;
use parley_wire::{ConversationId, UserId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::extract::{Json, Path, Person};
use crate::routes::conversations::ConversationView;
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub user_id: UserId,
    /// `member` (default), `admin`, or for an institution `owner`. In a group only
    /// the owner adds admins; in an institution only owners add owners.
    pub role: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRole {
    /// `owner` (for a group: hands it over), `admin` or `member`.
    pub role: String,
}

/// Add a member (owner or admin).
#[utoipa::path(post, path = "/v1/conversations/{id}/members", tag = "conversations", params(("id" = ConversationId, Path)),
    request_body = AddMember, security(("bearer" = [])),
    responses((status = 201, body = ConversationView), (status = 403, body = ErrorResponse), (status = 409, description = "already_member", body = ErrorResponse)))]
pub async fn add(
    State(state): State<AppState>,
    Person(caller): Person,
    Path(id): Path<ConversationId>,
    Json(req): Json<AddMember>,
) -> Result<(StatusCode, Json<ConversationView>), ApiError> {
    let outgoing = state.domain.add_member(caller, id, req.user_id, req.role).await?;
    state.publish(outgoing).await;
    Ok((StatusCode::CREATED, Json(ConversationView::details(caller, state.domain.conversation(caller, id).await?))))
}

/// Remove a member, or leave (your own user id).
#[utoipa::path(delete, path = "/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = ConversationId, Path), ("user_id" = UserId, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn remove(
    State(state): State<AppState>,
    Person(caller): Person,
    Path((id, user)): Path<(ConversationId, UserId)>,
) -> Result<StatusCode, ApiError> {
    let outgoing = state.domain.remove_member(caller, id, user).await?;
    state.publish(outgoing).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a member's role (owner only).
#[utoipa::path(patch, path = "/v1/conversations/{id}/members/{user_id}", tag = "conversations",
    params(("id" = ConversationId, Path), ("user_id" = UserId, Path)), request_body = SetRole, security(("bearer" = [])),
    responses((status = 200, body = ConversationView), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn set_role(
    State(state): State<AppState>,
    Person(caller): Person,
    Path((id, user)): Path<(ConversationId, UserId)>,
    Json(req): Json<SetRole>,
) -> Result<Json<ConversationView>, ApiError> {
    let outgoing = state.domain.set_member_role(caller, id, user, req.role).await?;
    state.publish(outgoing).await;
    Ok(Json(ConversationView::details(caller, state.domain.conversation(caller, id).await?)))
}
