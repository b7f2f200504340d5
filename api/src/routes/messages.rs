//! A conversation's history and the caller's read state in it.

use axum::extract::State;
use axum::http::StatusCode;
use parley_domain::HistoryQuery;
use parley_wire::payloads::{Message, ReceiptUpdate, Unread};
use parley_wire::{ConversationId, MessageId, Right};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Caller, Json, Path, Query, SignedIn};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Only messages with a smaller sequence number (the page just before it).
    pub before: Option<i64>,
    /// Only messages with a larger sequence number (the page just after it).
    pub after: Option<i64>,
    /// 1–200, default 50.
    pub limit: Option<u32>,
}

/// Messages in ascending `seq`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<Message>,
    /// More messages exist in the direction read: newer with `after`, older otherwise.
    pub has_more: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkRead {
    /// Every message up to this sequence number is read (and so delivered).
    pub seq: i64,
}

/// A page of a conversation's messages. Anyone but a member gets 404.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = ConversationId, Path, description = "conversation id"), HistoryParams), security(("bearer" = [])),
    responses((status = 200, body = MessageList), (status = 404, description = "conversation_not_found", body = ErrorResponse)))]
pub async fn history(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<ConversationId>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<MessageList>, ApiError> {
    let query = HistoryQuery { before: params.before, after: params.after, limit: params.limit };
    let page = state.domain.history(user, id, query).await?;
    Ok(Json(MessageList { messages: page.messages, has_more: page.has_more }))
}

/// Mark the conversation read up to a sequence number; the senders see their ticks
/// change and the caller's devices get the new unread counts.
#[utoipa::path(post, path = "/v1/conversations/{id}/read", tag = "conversations", params(("id" = ConversationId, Path)),
    request_body = MarkRead, security(("bearer" = [])),
    responses((status = 200, body = Unread), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn mark_read(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(id): Path<ConversationId>,
    Json(req): Json<MarkRead>,
) -> Result<Json<Unread>, ApiError> {
    let user = signed.may(Right::Receipts)?.user;
    let update = ReceiptUpdate { id: None, conversation_id: id, delivered_seq: None, read_seq: Some(req.seq) };
    let outgoing = state.domain.record_receipt(user, &update).await?;
    state.publish(outgoing).await;
    Ok(Json(state.domain.unread_in(user, id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditText {
    pub text: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// `everyone` (the sender only; leaves a tombstone) or `me` (default).
    #[serde(rename = "for")]
    pub scope: Option<String>,
}

/// An earlier text of an edited message.
#[derive(Debug, Serialize, ToSchema)]
pub struct EditView {
    pub text: String,
    pub replaced_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReactionView {
    pub user_id: parley_wire::UserId,
    pub emoji: String,
}

/// Change the text of one of your messages; members see `message_edited`.
#[utoipa::path(patch, path = "/v1/messages/{id}", tag = "messages", params(("id" = MessageId, Path)), request_body = EditText,
    security(("bearer" = [])),
    responses((status = 204), (status = 403, description = "not_sender", body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "message_deleted", body = ErrorResponse)))]
pub async fn edit(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(id): Path<MessageId>,
    Json(req): Json<EditText>,
) -> Result<StatusCode, ApiError> {
    let user = signed.may(Right::Send)?.user;
    let outgoing = state.domain.edit_message(user, id, &req.text).await?;
    state.publish(outgoing).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Delete a message for everyone (your own) or for yourself.
#[utoipa::path(delete, path = "/v1/messages/{id}", tag = "messages", params(("id" = MessageId, Path), DeleteParams),
    security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(id): Path<MessageId>,
    Query(params): Query<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    let user = signed.may(Right::Send)?.user;
    let everyone = match params.scope.as_deref() {
        None | Some("me") => false,
        Some("everyone") => true,
        Some(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_scope", "`for` is `everyone` or `me`")),
    };
    let outgoing = state.domain.delete_message(user, id, everyone).await?;
    state.publish(outgoing).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Add your reaction (one of each emoji per user).
#[utoipa::path(put, path = "/v1/messages/{id}/reactions/{emoji}", tag = "messages",
    params(("id" = MessageId, Path), ("emoji" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn react(
    State(state): State<AppState>,
    signed: SignedIn,
    Path((id, emoji)): Path<(MessageId, String)>,
) -> Result<StatusCode, ApiError> {
    let user = signed.may(Right::Send)?.user;
    let outgoing = state.domain.react(user, id, &emoji, true).await?;
    state.publish(outgoing).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove your reaction.
#[utoipa::path(delete, path = "/v1/messages/{id}/reactions/{emoji}", tag = "messages",
    params(("id" = MessageId, Path), ("emoji" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, body = ErrorResponse)))]
pub async fn unreact(
    State(state): State<AppState>,
    signed: SignedIn,
    Path((id, emoji)): Path<(MessageId, String)>,
) -> Result<StatusCode, ApiError> {
    let user = signed.may(Right::Send)?.user;
    let outgoing = state.domain.react(user, id, &emoji, false).await?;
    state.publish(outgoing).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Who reacted with what.
#[utoipa::path(get, path = "/v1/messages/{id}/reactions", tag = "messages", params(("id" = MessageId, Path)),
    security(("bearer" = [])), responses((status = 200, body = Vec<ReactionView>), (status = 404, body = ErrorResponse)))]
pub async fn reactions(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<MessageId>,
) -> Result<Json<Vec<ReactionView>>, ApiError> {
    let list = state.domain.message_reactions(user, id).await?;
    Ok(Json(list.into_iter().map(|(user_id, emoji)| ReactionView { user_id, emoji }).collect()))
}

/// The earlier texts of an edited message, oldest first.
#[utoipa::path(get, path = "/v1/messages/{id}/edits", tag = "messages", params(("id" = MessageId, Path)),
    security(("bearer" = [])), responses((status = 200, body = Vec<EditView>), (status = 404, body = ErrorResponse)))]
pub async fn edits(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<MessageId>,
) -> Result<Json<Vec<EditView>>, ApiError> {
    let list = state.domain.message_edits(user, id).await?;
    Ok(Json(list.into_iter().map(|e| EditView { text: e.text, replaced_at: e.replaced_at }).collect()))
}

/// Who got and who read a message (its sender excluded): the ticks of a group message.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReceiptsView {
    pub delivered: Vec<parley_wire::UserId>,
    pub read: Vec<parley_wire::UserId>,
}

/// Who got and read a message, from the members' watermarks.
#[utoipa::path(get, path = "/v1/messages/{id}/receipts", tag = "messages", params(("id" = MessageId, Path)),
    security(("bearer" = [])), responses((status = 200, body = ReceiptsView), (status = 404, body = ErrorResponse)))]
pub async fn receipts(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<MessageId>,
) -> Result<Json<ReceiptsView>, ApiError> {
    let r = state.domain.message_receipts(user, id).await?;
    Ok(Json(ReceiptsView { delivered: r.delivered, read: r.read }))
}
