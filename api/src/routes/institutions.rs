//! Institutions: create one (you become its owner), manage its members and profile,
//! and open a sign-in that acts for it (its tokens name you as the actor).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use parley_domain::{InstitutionMember, NewInstitution, StoreUser};
use parley_wire::UserId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Client, Holder, Json, Path};
use crate::routes::auth::{published, token_response, RevokedResponse, TokenResponse};
use crate::routes::members::{AddMember, SetRole};
use crate::routes::users::{profile_change, ProfileUpdate, PublicUser};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstitutionRequest {
    /// Its handle: 3–32 letters, digits, `_` or `.`, starting with a letter.
    pub username: String,
    pub display_name: String,
    pub bio: Option<String>,
}

/// A member of an institution (`owner`, `admin` or `member`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberView {
    pub user: PublicUser,
    pub role: String,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<MemberView>,
}

/// An institution the caller belongs to, with the caller's role.
#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipView {
    pub institution: PublicUser,
    pub role: String,
    pub added_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipList {
    pub institutions: Vec<MembershipView>,
}

fn member_view((m, account): (InstitutionMember, StoreUser)) -> MemberView {
    MemberView { user: account.into(), role: m.role, added_at: m.added_at }
}

/// Create an institution; the caller becomes its owner.
#[utoipa::path(post, path = "/v1/institutions", tag = "institutions", request_body = InstitutionRequest, security(("bearer" = [])),
    responses((status = 201, body = PublicUser), (status = 403, description = "acting_not_allowed, device_not_allowed", body = ErrorResponse),
        (status = 409, description = "identifier_taken", body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Json(req): Json<InstitutionRequest>,
) -> Result<(StatusCode, Json<PublicUser>), ApiError> {
    let new = NewInstitution { username: req.username, display_name: req.display_name, bio: req.bio };
    let institution = state.domain.create_institution(signed_in.user, new).await?;
    Ok((StatusCode::CREATED, Json(institution.into())))
}

/// The institutions the caller belongs to.
#[utoipa::path(get, path = "/v1/me/institutions", tag = "institutions", security(("bearer" = [])),
    responses((status = 200, body = MembershipList)))]
pub async fn mine(State(state): State<AppState>, Holder(signed_in): Holder) -> Result<Json<MembershipList>, ApiError> {
    let institutions = state
        .domain
        .my_institutions(signed_in.user)
        .await?
        .into_iter()
        .map(|(m, account)| MembershipView { institution: account.into(), role: m.role, added_at: m.added_at })
        .collect();
    Ok(Json(MembershipList { institutions }))
}

/// Change the institution's profile (owners and admins); the same fields and rules as `PATCH /v1/me`.
#[utoipa::path(patch, path = "/v1/institutions/{id}", tag = "institutions", params(("id" = UserId, Path)),
    request_body = ProfileUpdate, security(("bearer" = [])),
    responses((status = 200, body = PublicUser), (status = 403, description = "institution_role_required, field_not_allowed", body = ErrorResponse),
        (status = 404, description = "institution_not_found", body = ErrorResponse)))]
pub async fn update(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<PublicUser>, ApiError> {
    let change = profile_change(signed_in.user, body)?;
    let (updated, announced) = state.domain.update_institution(signed_in.user, id, change).await?;
    state.publish(announced).await;
    Ok(Json(updated.into()))
}

/// The members (members only).
#[utoipa::path(get, path = "/v1/institutions/{id}/members", tag = "institutions", params(("id" = UserId, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = MemberList), (status = 403, description = "not_institution_member", body = ErrorResponse)))]
pub async fn members(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
) -> Result<Json<MemberList>, ApiError> {
    let members = state.domain.institution_members(signed_in.user, id).await?;
    Ok(Json(MemberList { members: members.into_iter().map(member_view).collect() }))
}

/// Add a member (owners and admins; only owners add owners).
#[utoipa::path(post, path = "/v1/institutions/{id}/members", tag = "institutions", params(("id" = UserId, Path)),
    request_body = AddMember, security(("bearer" = [])),
    responses((status = 201, body = MemberView), (status = 403, description = "institution_role_required", body = ErrorResponse),
        (status = 409, description = "already_member", body = ErrorResponse), (status = 422, description = "invalid_member, invalid_role", body = ErrorResponse)))]
pub async fn add_member(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
    Json(req): Json<AddMember>,
) -> Result<(StatusCode, Json<MemberView>), ApiError> {
    let role = req.role.as_deref().unwrap_or("member");
    let added = state.domain.add_institution_member(signed_in.user, id, req.user_id, role).await?;
    Ok((StatusCode::CREATED, Json(member_view(added))))
}

/// Change a member's role (the last owner stays an owner).
#[utoipa::path(patch, path = "/v1/institutions/{id}/members/{user_id}", tag = "institutions",
    params(("id" = UserId, Path), ("user_id" = UserId, Path)), request_body = SetRole, security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, description = "member_not_found", body = ErrorResponse),
        (status = 409, description = "last_owner", body = ErrorResponse)))]
pub async fn set_member_role(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path((id, user)): Path<(UserId, UserId)>,
    Json(req): Json<SetRole>,
) -> Result<StatusCode, ApiError> {
    state.domain.set_institution_member_role(signed_in.user, id, user, &req.role).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member, or leave (your own id). The sign-ins it opened for the institution end.
#[utoipa::path(delete, path = "/v1/institutions/{id}/members/{user_id}", tag = "institutions",
    params(("id" = UserId, Path), ("user_id" = UserId, Path)), security(("bearer" = [])),
    responses((status = 200, body = RevokedResponse), (status = 403, body = ErrorResponse),
        (status = 404, description = "member_not_found", body = ErrorResponse), (status = 409, description = "last_owner", body = ErrorResponse)))]
pub async fn remove_member(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path((id, user)): Path<(UserId, UserId)>,
) -> Result<Json<RevokedResponse>, ApiError> {
    let revoked = state.domain.remove_institution_member(signed_in.user, id, user).await?;
    Ok(Json(published(&state, revoked).await))
}

/// Open a sign-in that acts for the institution: tokens for the institution's
/// account naming the caller as actor (`act` claim), refreshed like any other,
/// ending with the caller's own sign-in or membership. Use them for HTTP and as a
/// second MQTT connection (username: the institution's id).
#[utoipa::path(post, path = "/v1/institutions/{id}/sessions", tag = "institutions", params(("id" = UserId, Path)),
    security(("bearer" = [])),
    responses((status = 200, body = TokenResponse), (status = 403, description = "not_institution_member", body = ErrorResponse),
        (status = 404, description = "institution_not_found", body = ErrorResponse)))]
pub async fn act(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Client(client): Client,
    Path(id): Path<UserId>,
) -> Result<Response, ApiError> {
    let session = state.domain.act_for_institution(signed_in.user, signed_in.session, id, &client).await?;
    // Always bearer tokens: cookies would replace the member's own.
    Ok(token_response(&state, session, false))
}
