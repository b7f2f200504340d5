//! Profiles: the caller's own account (read, update with field rules), other
//! accounts' public profiles, user search, and the admin's role changes.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parley_domain::{ProfileChange, StoreUser, UserQuery};
use parley_wire::{Availability, Role, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::extract::{Caller, Holder, Json, Path, Person, Query};
use crate::{ApiError, AppState, ErrorResponse};

/// An account as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeView {
    pub id: UserId,
    pub username: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub phone: Option<String>,
    pub phone_verified: bool,
    #[serde(flatten)]
    pub profile: UserView,
}

/// An account as any signed-in user sees it (no email or phone).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub display_name: Option<String>,
    pub role: Role,
    /// Checked by an admin.
    pub verified: bool,
    pub bio: Option<String>,
    pub specialty: Option<String>,
    pub experience_years: Option<i64>,
    pub availability: Option<Availability>,
    /// Fetch it at `GET /v1/uploads/{photo_id}`.
    pub photo_id: Option<Uuid>,
    /// Mean rating (1–5) and how many gave one.
    pub rating: Option<f64>,
    pub rating_count: i64,
    pub created_at: DateTime<Utc>,
}

/// A public profile with its id and username.
#[derive(Debug, Serialize, ToSchema)]
pub struct PublicUser {
    pub id: UserId,
    pub username: Option<String>,
    #[serde(flatten)]
    pub profile: UserView,
}

impl From<StoreUser> for UserView {
    fn from(u: StoreUser) -> Self {
        Self {
            display_name: u.display_name,
            role: u.role,
            verified: u.verified_at.is_some(),
            bio: u.profile.bio,
            specialty: u.profile.specialty,
            experience_years: u.profile.experience_years,
            availability: u.profile.availability,
            photo_id: u.profile.photo_id,
            rating: u.rating,
            rating_count: u.rating_count,
            created_at: u.created_at,
        }
    }
}

impl From<StoreUser> for MeView {
    fn from(u: StoreUser) -> Self {
        Self {
            id: u.id,
            username: u.username.clone(),
            email: u.email.clone(),
            email_verified: u.email_verified_at.is_some(),
            phone: u.phone.clone(),
            phone_verified: u.phone_verified_at.is_some(),
            profile: u.into(),
        }
    }
}

impl From<StoreUser> for PublicUser {
    fn from(u: StoreUser) -> Self {
        Self { id: u.id, username: u.username.clone(), profile: u.into() }
    }
}

/// `null` clears a field; a missing field is left alone.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What the owner may change. Provider fields are for providers (availability for
/// institutions too); `photo_id` names an image the owner uploaded.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub display_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub bio: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub specialty: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub experience_years: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Availability>)]
    pub availability: Option<Option<Availability>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Uuid>)]
    pub photo_id: Option<Option<Uuid>>,
}

/// Fields a profile update may never set, and why.
const PROTECTED: &[(&str, &str)] = &[
    ("id", "the account id never changes"),
    ("role", "roles are granted by an admin"),
    ("verified", "verification is granted by an admin"),
    ("verified_at", "verification is granted by an admin"),
    ("rating", "ratings come from users' reviews"),
    ("rating_count", "ratings come from users' reviews"),
    ("email_verified", "an email is verified with the code sent to it"),
    ("phone_verified", "a phone is verified with the code sent to it"),
    ("email", "change the email at POST /v1/me/email (a code proves the new one)"),
    ("phone", "change the phone at POST /v1/me/phone (a code proves the new one)"),
    ("username", "change the username at PUT /v1/me/username"),
    ("password", "change the password at POST /v1/auth/password"),
    ("password_hash", "change the password at POST /v1/auth/password"),
    ("created_at", "the creation time never changes"),
];

/// The caller's own account.
#[utoipa::path(get, path = "/v1/me", tag = "profiles", security(("bearer" = [])),
    responses((status = 200, body = MeView), (status = 401, body = ErrorResponse)))]
pub async fn me(State(state): State<AppState>, Caller(user): Caller) -> Result<Json<MeView>, ApiError> {
    Ok(Json(state.domain.user(user).await?.into()))
}

/// Update the caller's profile. Protected fields (role, verified, rating…) are refused.
#[utoipa::path(patch, path = "/v1/me", tag = "profiles", request_body = ProfileUpdate, security(("bearer" = [])),
    responses(
        (status = 200, body = MeView),
        (status = 403, description = "field_not_allowed", body = ErrorResponse),
        (status = 422, description = "invalid_field, invalid_photo", body = ErrorResponse),
    ))]
pub async fn update_me(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Json(body): Json<serde_json::Map<String, serde_json::Value>>,
) -> Result<Json<MeView>, ApiError> {
    let change = profile_change(signed_in.user, body)?;
    let (updated, announced) = state.domain.update_profile(signed_in.user, change).await?;
    state.publish(announced).await;
    Ok(Json(updated.into()))
}

/// A profile update as sent (a JSON object), refusing protected fields before anything else.
pub(crate) fn profile_change(
    user: UserId,
    body: serde_json::Map<String, serde_json::Value>,
) -> Result<ProfileChange, ApiError> {
    if let Some((field, why)) = PROTECTED.iter().find(|(f, _)| body.contains_key(*f)) {
        tracing::warn!(user_id = %user, field, "protected profile field refused");
        return Err(ApiError::new(StatusCode::FORBIDDEN, "field_not_allowed", format!("{field}: {why}")));
    }
    let update: ProfileUpdate = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_json", e.to_string()))?;
    Ok(ProfileChange {
        display_name: update.display_name,
        bio: update.bio,
        specialty: update.specialty,
        experience_years: update.experience_years,
        availability: update.availability,
        photo_id: update.photo_id,
    })
}

/// Another account's public profile.
#[utoipa::path(get, path = "/v1/users/{id}", tag = "profiles", security(("bearer" = [])),
    params(("id" = UserId, Path)),
    responses((status = 200, body = PublicUser), (status = 404, description = "user_not_found", body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Caller(_caller): Caller,
    Path(id): Path<UserId>,
) -> Result<Json<PublicUser>, ApiError> {
    Ok(Json(state.domain.public_profile(id).await?.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    /// Part of the display name or username.
    pub name: Option<String>,
    pub role: Option<Role>,
    /// Part of the specialty.
    pub specialty: Option<String>,
    pub availability: Option<Availability>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<UserId>,
    /// 1–100, default 20.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    pub users: Vec<PublicUser>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<UserId>,
}

/// Find accounts by name, role, specialty and availability.
#[utoipa::path(get, path = "/v1/users", tag = "profiles", security(("bearer" = [])), params(SearchParams),
    responses((status = 200, body = UserPage), (status = 400, description = "invalid_query", body = ErrorResponse)))]
pub async fn search(
    State(state): State<AppState>,
    Person(_caller): Person,
    Query(p): Query<SearchParams>,
) -> Result<Json<UserPage>, ApiError> {
    let limit = p.limit.unwrap_or(20);
    let query = UserQuery {
        name: p.name,
        role: p.role,
        specialty: p.specialty,
        availability: p.availability,
        after: p.cursor,
        limit,
    };
    let (users, more) = state.domain.search_users(query).await?;
    let next_cursor = if more { users.last().map(|u| u.id) } else { None };
    Ok(Json(UserPage { users: users.into_iter().map(Into::into).collect(), next_cursor }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUserUpdate {
    pub role: Option<Role>,
    pub verified: Option<bool>,
}

/// Admins: set an account's role and verification.
#[utoipa::path(patch, path = "/v1/admin/users/{id}", tag = "admin", request_body = AdminUserUpdate, security(("bearer" = [])),
    params(("id" = UserId, Path)),
    responses((status = 200, body = PublicUser), (status = 403, description = "admin_only", body = ErrorResponse)))]
pub async fn admin_update(
    State(state): State<AppState>,
    Person(admin): Person,
    Path(id): Path<UserId>,
    Json(req): Json<AdminUserUpdate>,
) -> Result<Json<PublicUser>, ApiError> {
    Ok(Json(state.domain.admin_update_user(admin, id, req.role, req.verified).await?.into()))
}
