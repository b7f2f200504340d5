//! A conversation's history and the caller's read state in it.

use axum::extract::State;
use parley_domain::HistoryQuery;
use parley_wire::payloads::{Message, ReceiptUpdate, Unread};
use parley_wire::ConversationId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Caller, Json, Path, Query};
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
    let query = HistoryQuery {
        before: params.before,
        after: params.after,
        limit: params.limit,
    };
    let page = state.domain.history(user, id, query).await?;
    Ok(Json(MessageList {
        messages: page.messages,
        has_more: page.has_more,
    }))
}

/// Mark the conversation read up to a sequence number; the senders see their ticks
/// change and the caller's devices get the new unread counts.
#[utoipa::path(post, path = "/v1/conversations/{id}/read", tag = "conversations", params(("id" = ConversationId, Path)),
    request_body = MarkRead, security(("bearer" = [])),
    responses((status = 200, body = Unread), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn mark_read(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<ConversationId>,
    Json(req): Json<MarkRead>,
) -> Result<Json<Unread>, ApiError> {
    let update = ReceiptUpdate {
        id: None,
        conversation_id: id,
        delivered_seq: None,
        read_seq: Some(req.seq),
    };
    let outgoing = state.domain.record_receipt(user, &update).await?;
    state.publish(outgoing).await;
    Ok(Json(state.domain.unread_in(user, id).await?))
}
