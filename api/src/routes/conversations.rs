//! Conversations: listing, creating, reading and renaming them.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parley_domain::{
    ConversationCursor, ConversationDetails, ConversationFilter, ConversationRecord, ConversationSummary, ListView,
    MemberRecord, MemberSettings, NewConversation,
};
use parley_wire::payloads::{Message, SettingsUpdate};
use parley_wire::{Availability, ConversationId, Right, UserId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Caller, Json, Path, Person, Query, SignedIn};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// 1–200, default 50.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `all` (not archived; default), `unread`, `pinned`, `archived` or `favourites`.
    pub filter: Option<String>,
    /// Text in the title or in another member's username, display name or specialty.
    pub q: Option<String>,
}

/// A member and its receipt watermarks: every message up to `last_delivered_seq`
/// reached one of its devices, every one up to `last_read_seq` was read.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user_id: UserId,
    /// `owner`, `admin` or `member` (1:1 members are all `member`).
    pub role: String,
    pub joined_at: DateTime<Utc>,
    pub last_delivered_seq: i64,
    pub last_read_seq: i64,
    /// `online`, `away` or `offline` (conversation details only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Providers and institutions (conversation details only): their availability, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability: Option<Availability>,
}

impl From<MemberRecord> for MemberView {
    fn from(m: MemberRecord) -> Self {
        Self {
            user_id: m.user_id,
            role: m.role,
            joined_at: m.joined_at,
            last_delivered_seq: m.last_delivered_seq,
            last_read_seq: m.last_read_seq,
            status: None,
            last_seen_at: None,
            availability: None,
        }
    }
}

/// The caller's own settings for a conversation.
#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsView {
    pub pinned: bool,
    pub archived: bool,
    pub favourite: bool,
    pub muted_until: Option<DateTime<Utc>>,
    pub ringtone: Option<String>,
    /// 1:1 only: the caller blocked the other member.
    pub blocked: bool,
}

impl From<MemberSettings> for SettingsView {
    fn from(s: MemberSettings) -> Self {
        Self {
            pinned: s.pinned,
            archived: s.archived,
            favourite: s.favourite,
            muted_until: s.muted_until,
            ringtone: s.ringtone,
            blocked: s.blocked,
        }
    }
}

/// What a conversation belongs to (a consultation, a service request…).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContextView {
    /// `consultation`, `service_request`, `support` or `general`.
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

/// A conversation as one of its members sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationView {
    pub id: ConversationId,
    /// `direct` (1:1) or `group`.
    pub kind: String,
    pub title: Option<String>,
    /// Who talks to whom: `user_user`, `user_provider`, `user_institution`,
    /// `institution_institution`, `admin_provider` or `group`.
    pub audience: String,
    pub context: Option<ContextView>,
    pub members: Vec<MemberView>,
    /// Sequence number of the newest message; 0 when there is none.
    pub last_seq: i64,
    pub last_activity_at: DateTime<Utc>,
    pub last_message: Option<Message>,
    /// Messages from others the caller has not read (listing only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<i64>,
    /// The caller's own settings for this conversation.
    pub settings: SettingsView,
    pub created_at: DateTime<Utc>,
}

impl ConversationView {
    /// The view for `caller`: its own settings, nobody else's.
    fn new(
        caller: UserId,
        c: ConversationRecord,
        members: Vec<MemberRecord>,
        last_message: Option<Message>,
        unread: Option<i64>,
    ) -> Self {
        let settings = members.iter().find(|m| m.user_id == caller).map(|m| m.settings.clone()).unwrap_or_default();
        Self {
            settings: settings.into(),
            id: c.id,
            kind: c.kind,
            title: c.title,
            audience: c.audience,
            context: c.context_type.map(|kind| ContextView { kind, id: c.context_id }),
            members: members.into_iter().map(Into::into).collect(),
            last_seq: c.last_seq,
            last_activity_at: DateTime::from_timestamp_millis(c.last_activity_ms).unwrap_or_default(),
            last_message,
            unread,
            created_at: c.created_at,
        }
    }
}

impl ConversationView {
    pub fn listed(caller: UserId, s: ConversationSummary) -> Self {
        Self::new(caller, s.conversation, s.members, s.last_message, Some(s.unread))
    }

    pub fn details(caller: UserId, d: ConversationDetails) -> Self {
        Self::new(caller, d.conversation, d.members, None, None)
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationList {
    pub conversations: Vec<ConversationView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A conversation to create: a group (the caller becomes its owner) or the 1:1
/// conversation with one other user (returned as it is if it exists).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateConversation {
    /// `group` or `direct`.
    pub kind: String,
    pub title: Option<String>,
    /// The other members; exactly one for `direct`.
    pub members: Vec<UserId>,
    pub audience: Option<String>,
    pub context: Option<ContextView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameConversation {
    /// Up to 100 characters; empty or null removes the title.
    pub title: Option<String>,
}

fn encode_cursor(c: &ConversationSummary) -> String {
    format!("{}_{}", c.conversation.last_activity_ms, c.conversation.id)
}

fn decode_cursor(text: &str) -> Result<ConversationCursor, ApiError> {
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "invalid_cursor", "cursor is not one this API returned");
    let (ms, id) = text.split_once('_').ok_or_else(bad)?;
    Ok(ConversationCursor { last_activity_ms: ms.parse().map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
}

/// The caller's conversations, newest activity first, with unread counts.
#[utoipa::path(get, path = "/v1/conversations", tag = "conversations", params(ListParams), security(("bearer" = [])),
    responses((status = 200, body = ConversationList), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Caller(user): Caller,
    Query(params): Query<ListParams>,
) -> Result<Json<ConversationList>, ApiError> {
    let cursor = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let limit = params.limit.unwrap_or(50).clamp(1, 200);
    let view = match params.filter.as_deref() {
        None | Some("all") => ListView::All,
        Some("unread") => ListView::Unread,
        Some("pinned") => ListView::Pinned,
        Some("archived") => ListView::Archived,
        Some("favourites") => ListView::Favourites,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_filter",
                "filter is all, unread, pinned, archived or favourites",
            ))
        }
    };
    let filter = ConversationFilter { view, query: params.q.filter(|q| !q.trim().is_empty()) };
    let page = state.domain.conversations(user, cursor, Some(limit), &filter).await?;
    let next_cursor = (page.len() == limit as usize).then(|| page.last().map(encode_cursor)).flatten();
    let conversations = page.into_iter().map(|c| ConversationView::listed(user, c)).collect();
    Ok(Json(ConversationList { conversations, next_cursor }))
}

/// Create a group, or open the 1:1 conversation with someone.
#[utoipa::path(post, path = "/v1/conversations", tag = "conversations", request_body = CreateConversation, security(("bearer" = [])),
    responses((status = 201, body = ConversationView), (status = 404, description = "unknown_member", body = ErrorResponse),
        (status = 422, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Person(user): Person,
    Json(req): Json<CreateConversation>,
) -> Result<(StatusCode, Json<ConversationView>), ApiError> {
    let (context_type, context_id) = match req.context {
        Some(c) => (Some(c.kind), c.id),
        None => (None, None),
    };
    let new = NewConversation {
        kind: req.kind,
        title: req.title,
        members: req.members,
        audience: req.audience,
        context_type,
        context_id,
    };
    let (details, outgoing) = state.domain.create_conversation(user, new).await?;
    state.publish(outgoing).await;
    Ok((StatusCode::CREATED, Json(ConversationView::details(user, details))))
}

/// A conversation with its members, their receipt watermarks and presence. Members only.
#[utoipa::path(get, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = ConversationId, Path)), security(("bearer" = [])),
    responses((status = 200, body = ConversationView), (status = 404, description = "conversation_not_found", body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(user): Caller,
    Path(id): Path<ConversationId>,
) -> Result<Json<ConversationView>, ApiError> {
    let mut view = ConversationView::details(user, state.domain.conversation(user, id).await?);
    let ids: Vec<UserId> = view.members.iter().map(|m| m.user_id).collect();
    for p in state.domain.presence(&ids).await? {
        if let Some(m) = view.members.iter_mut().find(|m| m.user_id == p.user_id) {
            m.status = Some(p.status);
            m.last_seen_at = p.last_seen_at;
            m.availability = p.availability;
        }
    }
    Ok(Json(view))
}

/// Rename a group (owner or admin).
#[utoipa::path(patch, path = "/v1/conversations/{id}", tag = "conversations", params(("id" = ConversationId, Path)),
    request_body = RenameConversation, security(("bearer" = [])),
    responses((status = 200, body = ConversationView), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn rename(
    State(state): State<AppState>,
    Person(user): Person,
    Path(id): Path<ConversationId>,
    Json(req): Json<RenameConversation>,
) -> Result<Json<ConversationView>, ApiError> {
    let outgoing = state.domain.rename_conversation(user, id, req.title).await?;
    state.publish(outgoing).await;
    Ok(Json(ConversationView::details(user, state.domain.conversation(user, id).await?)))
}

/// Change your own settings for a conversation (pin, mute, archive, favourite,
/// ringtone; block in a 1:1). Your devices get a `settings` event.
#[utoipa::path(patch, path = "/v1/conversations/{id}/settings", tag = "conversations", params(("id" = ConversationId, Path)),
    request_body = SettingsUpdate, security(("bearer" = [])),
    responses((status = 200, body = SettingsView), (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn settings(
    State(state): State<AppState>,
    signed: SignedIn,
    Path(id): Path<ConversationId>,
    Json(update): Json<SettingsUpdate>,
) -> Result<Json<SettingsView>, ApiError> {
    let user = signed.may(Right::Settings)?.user;
    if update.conversation_id.is_some_and(|c| c != id) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_json",
            "conversation_id differs from the path",
        ));
    }
    let (settings, outgoing) = state.domain.update_settings(user, id, parley_domain::settings_change(&update)).await?;
    state.publish(outgoing).await;
    Ok(Json(settings.into()))
}
