//! Contacts: ask, accept, decline, remove, and the list with online state and
//! last seen. Each change also reaches both users' devices on `to/{uid}/contact`.

use std::collections::HashMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use parley_domain::ContactState;
use parley_wire::{Availability, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Json, Path, Person};
use crate::routes::users::PublicUser;
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactRequest {
    pub user_id: UserId,
}

/// Where the caller stands with a user: `none`, `requested` (the caller asked),
/// `incoming` (they asked), `contacts`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactStateView {
    pub user_id: UserId,
    pub state: &'static str,
}

/// One contact or request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub user: PublicUser,
    pub state: &'static str,
    /// When they became contacts, or when the request was made.
    pub since: DateTime<Utc>,
    /// Contacts only: `online`, `away` or `offline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Contacts that are providers or institutions: `available`, `busy` or `unavailable`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability: Option<Availability>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ContactList {
    pub contacts: Vec<ContactView>,
}

fn state_view(user_id: UserId, state: ContactState) -> Json<ContactStateView> {
    Json(ContactStateView { user_id, state: state.as_str() })
}

/// Ask a user to become contacts (accepts at once if they already asked you).
#[utoipa::path(post, path = "/v1/contacts", tag = "contacts", request_body = ContactRequest, security(("bearer" = [])),
    responses((status = 200, body = ContactStateView), (status = 404, description = "user_not_found", body = ErrorResponse)))]
pub async fn request(
    State(state): State<AppState>,
    Person(user): Person,
    Json(req): Json<ContactRequest>,
) -> Result<Json<ContactStateView>, ApiError> {
    let (now, downlinks) = state.domain.request_contact(user, req.user_id).await?;
    state.publish(downlinks).await;
    Ok(state_view(req.user_id, now))
}

/// Accept a pending request from a user.
#[utoipa::path(post, path = "/v1/contacts/{user_id}/accept", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = UserId, Path)),
    responses((status = 200, body = ContactStateView), (status = 404, description = "request_not_found", body = ErrorResponse)))]
pub async fn accept(
    State(state): State<AppState>,
    Person(user): Person,
    Path(from): Path<UserId>,
) -> Result<Json<ContactStateView>, ApiError> {
    answer(&state, user, from, true).await
}

/// Decline a pending request from a user.
#[utoipa::path(post, path = "/v1/contacts/{user_id}/decline", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = UserId, Path)),
    responses((status = 200, body = ContactStateView), (status = 404, description = "request_not_found", body = ErrorResponse)))]
pub async fn decline(
    State(state): State<AppState>,
    Person(user): Person,
    Path(from): Path<UserId>,
) -> Result<Json<ContactStateView>, ApiError> {
    answer(&state, user, from, false).await
}

async fn answer(
    state: &AppState,
    user: UserId,
    from: UserId,
    accept: bool,
) -> Result<Json<ContactStateView>, ApiError> {
    let (now, downlinks) = state.domain.answer_contact(user, from, accept).await?;
    state.publish(downlinks).await;
    Ok(state_view(from, now))
}

/// Remove a contact, or withdraw a request either way.
#[utoipa::path(delete, path = "/v1/contacts/{user_id}", tag = "contacts", security(("bearer" = [])),
    params(("user_id" = UserId, Path)),
    responses((status = 200, body = ContactStateView), (status = 404, description = "contact_not_found", body = ErrorResponse)))]
pub async fn remove(
    State(state): State<AppState>,
    Person(user): Person,
    Path(other): Path<UserId>,
) -> Result<Json<ContactStateView>, ApiError> {
    let downlinks = state.domain.remove_contact(user, other).await?;
    state.publish(downlinks).await;
    Ok(state_view(other, ContactState::None))
}

/// The caller's contacts with online state and last seen, newest first.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", security(("bearer" = [])),
    responses((status = 200, body = ContactList), (status = 401, body = ErrorResponse)))]
pub async fn list(State(state): State<AppState>, Person(user): Person) -> Result<Json<ContactList>, ApiError> {
    listing(&state, user, false).await
}

/// Pending requests: those the caller made (`requested`) and received (`incoming`).
#[utoipa::path(get, path = "/v1/contacts/requests", tag = "contacts", security(("bearer" = [])),
    responses((status = 200, body = ContactList), (status = 401, body = ErrorResponse)))]
pub async fn requests(State(state): State<AppState>, Person(user): Person) -> Result<Json<ContactList>, ApiError> {
    listing(&state, user, true).await
}

async fn listing(state: &AppState, user: UserId, requests: bool) -> Result<Json<ContactList>, ApiError> {
    let records = state.domain.contacts(user, requests).await?;
    let ids: Vec<UserId> = records.iter().map(|r| r.user).collect();
    let presence: HashMap<UserId, _> = if requests {
        HashMap::new()
    } else {
        state.domain.presence(&ids).await?.into_iter().map(|p| (p.user_id, p)).collect()
    };
    let mut profiles: HashMap<UserId, _> = state.domain.users(&ids).await?.into_iter().map(|u| (u.id, u)).collect();
    let mut contacts = Vec::with_capacity(records.len());
    for record in records {
        let Some(profile) = profiles.remove(&record.user) else { continue };
        let seen = presence.get(&record.user);
        contacts.push(ContactView {
            user: profile.into(),
            state: record.state.as_str(),
            since: record.since,
            status: seen.map(|p| p.status.clone()),
            last_seen_at: seen.and_then(|p| p.last_seen_at),
            availability: seen.and_then(|p| p.availability),
        });
    }
    Ok(Json(ContactList { contacts }))
}
