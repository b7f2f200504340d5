//! Kiosk devices: provisioned by a platform admin or an institution's owners and
//! admins, with a secret shown once that the device exchanges for short-lived
//! tokens carrying its rights.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use parley_domain::{DeviceRecord, DeviceRequest, DeviceSecret};
use parley_wire::UserId;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::extract::{Client, Holder, Json, Path, Query};
use crate::{ApiError, AppState, ErrorResponse};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// Shown as the device's display name, e.g. "Lobby kiosk 2".
    pub label: String,
    /// The institution it serves; required unless a platform admin provisions it.
    pub institution_id: Option<UserId>,
    /// Among `send`, `receipts`, `typing`, `presence`, `settings`; default
    /// `["send", "receipts", "typing"]`. Reading and sync are always allowed.
    pub rights: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceUpdate {
    pub label: Option<String>,
    /// New rights end the device's current tokens; its next exchange carries them.
    pub rights: Option<Vec<String>>,
}

/// A device as its managers see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    /// The device's account id: its MQTT username, and how conversations name it.
    pub id: UserId,
    pub label: String,
    pub institution_id: Option<UserId>,
    pub rights: Vec<String>,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub secret_set_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub retired_at: Option<DateTime<Utc>>,
}

/// A device with its secret, shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceWithSecret {
    pub device: DeviceView,
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceFilter {
    /// Devices of this institution; without it, every device (platform admins).
    pub institution_id: Option<UserId>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceTokenRequest {
    pub device_id: UserId,
    pub secret: String,
}

/// A device's access token: `Authorization: Bearer …` and the MQTT password (with
/// the device id as username). There is no refresh token: exchange the secret again.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceTokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub device_id: UserId,
    pub rights: Vec<String>,
}

fn rights(stored: &str) -> Vec<String> {
    stored.split_whitespace().map(str::to_string).collect()
}

impl From<DeviceRecord> for DeviceView {
    fn from(d: DeviceRecord) -> Self {
        Self {
            id: d.id,
            rights: rights(&d.rights),
            label: d.label,
            institution_id: d.institution,
            created_by: d.created_by,
            created_at: d.created_at,
            secret_set_at: d.secret_set_at,
            last_used_at: d.last_used_at,
            retired_at: d.revoked_at,
        }
    }
}

impl From<DeviceSecret> for DeviceWithSecret {
    fn from(d: DeviceSecret) -> Self {
        Self { device: d.device.into(), secret: d.secret }
    }
}

/// Provision a device; the answer holds its secret, never shown again.
#[utoipa::path(post, path = "/v1/devices", tag = "devices", request_body = ProvisionRequest, security(("bearer" = [])),
    responses((status = 201, body = DeviceWithSecret),
        (status = 403, description = "institution_role_required, not_institution_member", body = ErrorResponse),
        (status = 422, description = "invalid_rights, invalid_field", body = ErrorResponse)))]
pub async fn provision(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Json(req): Json<ProvisionRequest>,
) -> Result<(StatusCode, Json<DeviceWithSecret>), ApiError> {
    let request = DeviceRequest { label: req.label, institution: req.institution_id, rights: req.rights };
    let device = state.domain.provision_device(signed_in.user, request).await?;
    Ok((StatusCode::CREATED, Json(device.into())))
}

/// The devices of an institution (its owners and admins), or all (platform admins).
#[utoipa::path(get, path = "/v1/devices", tag = "devices", params(DeviceFilter), security(("bearer" = [])),
    responses((status = 200, body = DeviceList), (status = 403, body = ErrorResponse)))]
pub async fn list(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Query(filter): Query<DeviceFilter>,
) -> Result<Json<DeviceList>, ApiError> {
    let devices = state.domain.devices(signed_in.user, filter.institution_id).await?;
    Ok(Json(DeviceList { devices: devices.into_iter().map(Into::into).collect() }))
}

/// One device.
#[utoipa::path(get, path = "/v1/devices/{id}", tag = "devices", params(("id" = UserId, Path)), security(("bearer" = [])),
    responses((status = 200, body = DeviceView), (status = 404, description = "device_not_found", body = ErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
) -> Result<Json<DeviceView>, ApiError> {
    Ok(Json(state.domain.device(signed_in.user, id).await?.into()))
}

/// Rename a device or change its rights (which closes its connections; it exchanges its secret again).
#[utoipa::path(patch, path = "/v1/devices/{id}", tag = "devices", params(("id" = UserId, Path)), request_body = DeviceUpdate,
    security(("bearer" = [])),
    responses((status = 200, body = DeviceView), (status = 404, description = "device_not_found", body = ErrorResponse),
        (status = 409, description = "device_retired", body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn update(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
    Json(req): Json<DeviceUpdate>,
) -> Result<Json<DeviceView>, ApiError> {
    let (device, downlinks) = state.domain.update_device(signed_in.user, id, req.label, req.rights).await?;
    state.publish(downlinks).await;
    Ok(Json(device.into()))
}

/// Give a device a new secret; the old one stops working and its connections close.
#[utoipa::path(post, path = "/v1/devices/{id}/secret", tag = "devices", params(("id" = UserId, Path)), security(("bearer" = [])),
    responses((status = 200, body = DeviceWithSecret), (status = 404, description = "device_not_found", body = ErrorResponse),
        (status = 409, description = "device_retired", body = ErrorResponse)))]
pub async fn renew_secret(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
) -> Result<Json<DeviceWithSecret>, ApiError> {
    let (device, downlinks) = state.domain.renew_device_secret(signed_in.user, id).await?;
    state.publish(downlinks).await;
    Ok(Json(device.into()))
}

/// Retire a device for good: its secret stops working and its connections close.
/// Its account stays, so the messages it sent keep their sender.
#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "devices", params(("id" = UserId, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 404, description = "device_not_found", body = ErrorResponse),
        (status = 409, description = "device_retired", body = ErrorResponse)))]
pub async fn retire(
    State(state): State<AppState>,
    Holder(signed_in): Holder,
    Path(id): Path<UserId>,
) -> Result<StatusCode, ApiError> {
    let downlinks = state.domain.retire_device(signed_in.user, id).await?;
    state.publish(downlinks).await;
    Ok(StatusCode::NO_CONTENT)
}

/// A device exchanges its secret for an access token (throttled like logins).
#[utoipa::path(post, path = "/v1/auth/device-token", tag = "auth", request_body = DeviceTokenRequest,
    responses((status = 200, body = DeviceTokenResponse),
        (status = 401, description = "invalid_credentials, device_retired, device_secret_expired", body = ErrorResponse),
        (status = 429, description = "too_many_attempts", body = ErrorResponse)))]
pub async fn token(
    State(state): State<AppState>,
    Client(client): Client,
    Json(req): Json<DeviceTokenRequest>,
) -> Result<Json<DeviceTokenResponse>, ApiError> {
    let token = state.domain.device_token(req.device_id, &req.secret, &client).await?;
    Ok(Json(DeviceTokenResponse {
        access_token: token.access_token,
        token_type: "Bearer",
        expires_in: token.expires_in,
        device_id: token.device.id,
        rights: rights(&token.device.rights),
    }))
}
