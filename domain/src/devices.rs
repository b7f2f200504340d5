//! Kiosk devices. A platform admin, or an owner or admin of an institution,
//! provisions a device: a `device` account with a long-lived secret (shown once,
//! kept as a hash) and a set of rights. The device exchanges its secret for
//! short-lived access tokens that carry those rights, so the gate limits what it
//! may publish. Renewing the secret or changing the rights ends the device's
//! current sign-in (its connections are closed); retiring it ends it for good.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use parley_store::{DeviceRecord, DeviceRenewal, NewDevice, NewSession, NewUser};
use parley_wire::payloads::Outgoing;
use parley_wire::{DeviceRights, Role, UserId};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::accounts::ClientInfo;
use crate::institutions::NO_PASSWORD;
use crate::sessions::revocation;
use crate::tokens::Grant;
use crate::{constant_time_eq, now_ms, Domain, DomainError};

/// A device to provision.
#[derive(Debug, Clone, Default)]
pub struct DeviceRequest {
    pub label: String,
    /// The institution it serves (required unless a platform admin provisions it).
    pub institution: Option<UserId>,
    /// Right names; `None` gives a kiosk's default (send, receipts, typing).
    pub rights: Option<Vec<String>>,
}

/// A device with its secret, which is never shown again.
#[derive(Debug, Clone)]
pub struct DeviceSecret {
    pub device: DeviceRecord,
    pub secret: String,
}

/// What a device gets for its secret.
#[derive(Debug, Clone)]
pub struct DeviceToken {
    pub access_token: String,
    pub expires_in: u64,
    pub device: DeviceRecord,
}

fn new_secret() -> (String, Vec<u8>) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let secret = format!("pds_{}", URL_SAFE_NO_PAD.encode(raw));
    let hash = hash_secret(&secret);
    (secret, hash)
}

fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn parse_rights(rights: Option<Vec<String>>) -> Result<DeviceRights, DomainError> {
    let Some(names) = rights else { return Ok(DeviceRights::KIOSK) };
    let rights: Result<Vec<_>, _> = names.iter().map(|n| n.parse()).collect();
    rights.map(DeviceRights::from_rights).map_err(|_| {
        DomainError::invalid("invalid_rights", "rights are among `send`, `receipts`, `typing`, `presence`, `settings`")
    })
}

fn clean_label(label: String) -> Result<String, DomainError> {
    crate::profiles::clean_text("label", Some(label), 64)?
        .ok_or_else(|| DomainError::invalid("invalid_field", "label is required"))
}

fn device_not_found() -> DomainError {
    DomainError::not_found("device_not_found", "no such device")
}

impl Domain {
    /// Platform admins manage every device; an institution's owners and admins manage its own.
    async fn may_manage_devices(&self, caller: UserId, institution: Option<UserId>) -> Result<(), DomainError> {
        if self.user(caller).await?.role == Role::Admin {
            if let Some(institution) = institution {
                self.institution(institution).await?;
            }
            return Ok(());
        }
        let Some(institution) = institution else {
            return Err(DomainError::forbidden(
                "institution_role_required",
                "devices serve an institution: give institution_id of one you administer",
            ));
        };
        self.institution_rank(institution, caller, "admin").await.map(|_| ())
    }

    /// A device the caller may manage.
    async fn managed_device(&self, caller: UserId, id: UserId) -> Result<DeviceRecord, DomainError> {
        let device = self.store().device(id).await?.ok_or_else(device_not_found)?;
        match self.may_manage_devices(caller, device.institution).await {
            Ok(()) => Ok(device),
            // Someone else's device is as good as none.
            Err(_) => Err(device_not_found()),
        }
    }

    fn device_session(&self, device: UserId, now: i64) -> NewSession {
        NewSession {
            id: Uuid::now_v7(),
            user: device,
            token_hash: None,
            acting: None,
            now_ms: now,
            token_expires_at_ms: now,
            expires_at_ms: now + self.auth().policy.device_secret_lifetime.as_millis() as i64,
            user_agent: None,
            client_addr: None,
        }
    }

    /// Provisions a device and returns its secret (shown this once).
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn provision_device(&self, caller: UserId, request: DeviceRequest) -> Result<DeviceSecret, DomainError> {
        let label = clean_label(request.label)?;
        let rights = parse_rights(request.rights)?;
        self.may_manage_devices(caller, request.institution).await?;
        let now = now_ms();
        let id = UserId::new();
        let (secret, secret_hash) = new_secret();
        let new = NewDevice {
            account: NewUser {
                id,
                // Longer than any chosen username may be, so never one somebody registered.
                username: Some(format!("device.{}", id.0.simple())),
                email: None,
                phone: None,
                display_name: Some(label.clone()),
                password_hash: NO_PASSWORD.into(),
                role: Role::Device,
                created_at_ms: now,
            },
            institution: request.institution,
            created_by: caller,
            label,
            rights: rights.to_string(),
            secret_hash,
            session: self.device_session(id, now),
        };
        self.store().create_device(&new).await?;
        tracing::info!(device_id = %id, "device provisioned");
        let device = self.store().device(id).await?.ok_or_else(device_not_found)?;
        Ok(DeviceSecret { device, secret })
    }

    /// Devices of `institution`, or every device (platform admins only).
    pub async fn devices(&self, caller: UserId, institution: Option<UserId>) -> Result<Vec<DeviceRecord>, DomainError> {
        self.may_manage_devices(caller, institution).await?;
        Ok(self.store().devices(institution).await?)
    }

    /// One device the caller manages.
    pub async fn device(&self, caller: UserId, id: UserId) -> Result<DeviceRecord, DomainError> {
        self.managed_device(caller, id).await
    }

    /// Gives a device a new secret; the old one stops working and its connections close.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn renew_device_secret(
        &self,
        caller: UserId,
        id: UserId,
    ) -> Result<(DeviceSecret, Vec<Outgoing>), DomainError> {
        self.managed_device(caller, id).await?;
        let (secret, hash) = new_secret();
        let downlinks = self.renew_device(id, Some(hash), None).await?;
        let device = self.store().device(id).await?.ok_or_else(device_not_found)?;
        Ok((DeviceSecret { device, secret }, downlinks))
    }

    /// Renames a device and/or changes its rights (which ends its current tokens, so
    /// the next exchange carries the new rights).
    pub async fn update_device(
        &self,
        caller: UserId,
        id: UserId,
        label: Option<String>,
        rights: Option<Vec<String>>,
    ) -> Result<(DeviceRecord, Vec<Outgoing>), DomainError> {
        let label = label.map(clean_label).transpose()?;
        let rights = rights.map(|r| parse_rights(Some(r))).transpose()?;
        let device = self.managed_device(caller, id).await?;
        if device.revoked_at.is_some() {
            return Err(DomainError::conflict("device_retired", "this device is retired"));
        }
        if let Some(label) = label {
            self.store().set_device_label(id, &label).await?;
        }
        let mut downlinks = Vec::new();
        if let Some(rights) = rights.filter(|r| r.to_string() != device.rights) {
            downlinks = self.renew_device(id, None, Some(rights.to_string())).await?;
        }
        let device = self.store().device(id).await?.ok_or_else(device_not_found)?;
        Ok((device, downlinks))
    }

    async fn renew_device(
        &self,
        id: UserId,
        secret_hash: Option<Vec<u8>>,
        rights: Option<String>,
    ) -> Result<Vec<Outgoing>, DomainError> {
        let now = now_ms();
        let renewal = DeviceRenewal { secret_hash, rights, session: self.device_session(id, now) };
        match self.store().renew_device(id, &renewal, now).await? {
            None => Err(DomainError::conflict("device_retired", "this device is retired")),
            Some(old) => Ok(old.map(|s| revocation(id, vec![s])).into_iter().collect()),
        }
    }

    /// Retires a device for good: its secret stops working and its connections close.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn retire_device(&self, caller: UserId, id: UserId) -> Result<Vec<Outgoing>, DomainError> {
        self.managed_device(caller, id).await?;
        match self.store().retire_device(id, now_ms()).await? {
            None => Err(DomainError::conflict("device_retired", "this device is already retired")),
            Some(session) => {
                tracing::info!(device_id = %id, "device retired");
                Ok(session.map(|s| revocation(id, vec![s])).into_iter().collect())
            }
        }
    }

    /// Exchanges a device's secret for a short-lived access token. Failures are
    /// throttled like logins and look the same for unknown devices and wrong secrets.
    #[tracing::instrument(skip_all)]
    pub async fn device_token(
        &self,
        device: UserId,
        secret: &str,
        client: &ClientInfo,
    ) -> Result<DeviceToken, DomainError> {
        let refused = || DomainError::unauthorized("invalid_credentials", "device id or secret is wrong");
        let key = format!("device:{device}");
        self.check_login_throttle(&key, client).await?;
        let record = self.store().device(device).await?;
        let matches = record.as_ref().is_some_and(|d| constant_time_eq(&hash_secret(secret), &d.secret_hash));
        let Some(record) = record.filter(|_| matches) else {
            self.store().record_login_failure(&key, client.addr_key(), now_ms()).await?;
            return Err(refused());
        };
        if record.revoked_at.is_some() {
            return Err(DomainError::unauthorized("device_retired", "this device was retired by its administrator"));
        }
        let now = now_ms();
        let live = match record.session {
            Some(session) => self.store().session_end(record.id, session, now).await?.map(|end| (session, end)),
            None => None,
        };
        let Some((session, ends)) = live else {
            return Err(DomainError::unauthorized(
                "device_secret_expired",
                "this device's secret has expired; its administrator must renew it",
            ));
        };
        let rights: DeviceRights =
            record.rights.parse().map_err(|_| DomainError::Internal("stored device rights do not parse".into()))?;
        self.store().touch_device(record.id, now).await?;
        self.store().clear_login_failures(&key).await?;
        let access_token = self.tokens().issue_access_with(record.id, session, Grant::Device(rights), now / 1000);
        let ttl = self.tokens().settings().access_ttl.as_secs();
        let expires_in = ttl.min(u64::try_from((ends - now) / 1000).unwrap_or(0));
        Ok(DeviceToken { access_token, expires_in, device: record })
    }
}
