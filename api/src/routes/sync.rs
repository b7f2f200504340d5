//! Gap-free sync over HTTP, unread counts, presence and message search.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use parley_domain::SearchCursor;
use parley_wire::payloads::{Message, Presence};
use parley_wire::{ConversationId, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Caller, Json, Query};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SyncParams {
    /// The last event number the device has (0 for everything kept).
    pub after: i64,
    /// 1–1000, default 200.
    pub limit: Option<u32>,
}

/// Events after `after`, in order (see docs/protocol.md for the event types).
#[derive(Debug, Serialize, ToSchema)]
pub struct SyncView {
    /// Each: `event_seq`, `type`, and the event's fields.
    pub events: Vec<serde_json::Value>,
    pub last_seq: i64,
    pub has_more: bool,
    /// The gap cannot be replayed: reload conversations and pages, then sync from `last_seq`.
    pub reset: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UnreadView {
    pub total: i64,
    /// Conversation id → unread count, for conversations with unread messages.
    pub conversations: BTreeMap<String, i64>,
}

/// What the caller missed since event `after`.
#[utoipa::path(get, path = "/v1/sync", tag = "sync", params(SyncParams), security(("bearer" = [])),
    responses((status = 200, body = SyncView), (status = 401, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn sync(
    State(state): State<AppState>,
    Caller(user): Caller,
    Query(params): Query<SyncParams>,
) -> Result<Json<SyncView>, ApiError> {
    let answer = state.domain.sync(user, params.after, params.limit).await?;
    let events = answer.events.iter().map(|e| serde_json::to_value(e).unwrap_or_default()).collect();
    Ok(Json(SyncView { events, last_seq: answer.last_seq, has_more: answer.has_more, reset: answer.reset }))
}

/// Unread counts, per conversation and in total.
#[utoipa::path(get, path = "/v1/unread", tag = "sync", security(("bearer" = [])),
    responses((status = 200, body = UnreadView), (status = 401, body = ErrorResponse)))]
pub async fn unread(State(state): State<AppState>, Caller(user): Caller) -> Result<Json<UnreadView>, ApiError> {
    let (counts, total) = state.domain.unread(user).await?;
    Ok(Json(UnreadView { total, conversations: counts.into_iter().map(|(c, n)| (c.to_string(), n)).collect() }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PresenceParams {
    /// Comma-separated user ids (at most 200).
    pub users: String,
}

/// The presence (online, away or offline, and last seen) of users who share a
/// conversation with the caller; others are left out.
#[utoipa::path(get, path = "/v1/presence", tag = "sync", params(PresenceParams), security(("bearer" = [])),
    responses((status = 200, body = Vec<Presence>), (status = 400, body = ErrorResponse)))]
pub async fn presence(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(params): Query<PresenceParams>,
) -> Result<Json<Vec<Presence>>, ApiError> {
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m.to_string());
    let ids = params
        .users
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse::<UserId>().map_err(|_| bad("users are comma-separated user ids")))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() || ids.len() > 200 {
        return Err(bad("give 1 to 200 user ids"));
    }
    Ok(Json(state.domain.presence_seen_by(caller, &ids).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Words that must all appear (1–200 characters).
    pub q: String,
    /// Only this conversation.
    pub conversation_id: Option<ConversationId>,
    /// 1–100, default 20.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub message: Message,
    /// The text with each match between `<mark>` and `</mark>`.
    pub highlight: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResults {
    pub results: Vec<SearchResult>,
    pub next_cursor: Option<String>,
}

/// Full-text search over the messages the caller can read, newest first.
#[utoipa::path(get, path = "/v1/search", tag = "sync", params(SearchParams), security(("bearer" = [])),
    responses((status = 200, body = SearchResults), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn search(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchResults>, ApiError> {
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", "cursor is not one this API returned");
    let cursor = match params.cursor.as_deref() {
        Some(text) => {
            let (ms, id) = text.split_once('_').ok_or_else(bad)?;
            Some(SearchCursor { sent_at_ms: ms.parse().map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
        }
        None => None,
    };
    let limit = params.limit.unwrap_or(20).clamp(1, 100);
    let hits = state.domain.search(caller, &params.q, params.conversation_id, cursor, Some(limit)).await?;
    let next_cursor = (hits.len() == limit as usize)
        .then(|| hits.last().map(|h| format!("{}_{}", h.message.sent_at.timestamp_millis(), h.message.id)))
        .flatten();
    let results = hits.into_iter().map(|h| SearchResult { message: h.message, highlight: h.highlight }).collect();
    Ok(Json(SearchResults { results, next_cursor }))
}
