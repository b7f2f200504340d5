//! Conversations and their history, for members only.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parley_domain::{ConversationCursor, ConversationSummary, HistoryQuery};
use parley_wire::payloads::Message;
use parley_wire::{ConversationId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Caller, Json, Path, Query};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1–200, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A conversation as one of its members sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    pub id: ConversationId,
    /// `direct` (1:1).
    pub kind: String,
    pub members: Vec<UserId>,
    /// Sequence number of the newest message; 0 when there is none.
    pub last_seq: i64,
    pub last_activity_at: DateTime<Utc>,
    pub last_message: Option<Message>,
    pub created_at: DateTime<Utc>,
}

impl From<ConversationSummary> for ConversationView {
    fn from(c: ConversationSummary) -> Self {
        Self {
            id: c.id,
            kind: c.kind,
            members: c.members,
            last_seq: c.last_seq,
            last_activity_at: DateTime::from_timestamp_millis(c.last_activity_ms)
                .unwrap_or_default(),
            last_message: c.last_message,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

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

fn encode_cursor(c: &ConversationSummary) -> String {
    format!("{}_{}", c.last_activity_ms, c.id)
}

fn decode_cursor(text: &str) -> Result<ConversationCursor, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
            "cursor is not one this API returned",
        )
    };
    let (ms, id) = text.split_once('_').ok_or_else(bad)?;
    Ok(ConversationCursor {
        last_activity_ms: ms.parse().map_err(|_| bad())?,
        id: id.parse().map_err(|_| bad())?,
    })
}

/// The caller's conversations, newest activity first.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = ConversationList), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(user): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<ConversationList>, ApiError> {
    let cursor = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = params.limit.unwrap_or(50).clamp(1, 200);
    let page = state
        .domain
        .conversations(user, cursor, Some(limit))
        .await?;
    let next_cursor = (page.len() == limit as usize)
        .then(|| page.last().map(encode_cursor))
        .flatten();
    Ok(Json(ConversationList {
        conversations: page.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// A page of a conversation's messages. Anyone but a member gets 404.
#[utoipa::path(get, path = "/v1/conversations/{id}/messages", tag = "conversations",
    params(("id" = ConversationId, Path, description = "conversation id"), HistoryParams), security(("bearer" = [])),
    responses((status = 200, body = MessageList), (status = 404, description = "conversation_not_found", body = ErrorResponse)))]
pub async fn messages(
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
