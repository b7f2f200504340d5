//! Profiles: what an account says about itself, with field rules (who may set
//! which field, and what values), public views of other accounts, and user search.
//! Role, verification and rating are never written here.

use parley_store::{ProfileChange, UserQuery, UserRecord};
use parley_wire::payloads::Outgoing;
use parley_wire::{Role, UserId};

use crate::{Domain, DomainError};

/// Most results of one user search page.
pub const MAX_SEARCH_PAGE: u32 = 100;

/// A trimmed optional text of at most `max` characters; empty means none.
pub(crate) fn clean_text(
    field: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, DomainError> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if v.chars().count() > max => {
            Err(DomainError::invalid("invalid_field", format!("{field} is at most {max} characters")))
        }
        Some(v) if v.chars().any(char::is_control) && field != "bio" => {
            Err(DomainError::invalid("invalid_field", format!("{field} may not contain control characters")))
        }
        Some(v) if v.is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn cleaned(
    field: &'static str,
    value: Option<Option<String>>,
    max: usize,
) -> Result<Option<Option<String>>, DomainError> {
    value.map(|v| clean_text(field, v, max)).transpose()
}

impl Domain {
    /// Applies the owner's change to its profile. Provider fields (specialty,
    /// experience, availability) belong to providers; the photo must be an image the
    /// owner uploaded.
    ///
    /// A change of availability is announced like any presence change: the returned
    /// signals go to the owner's contacts and conversation partners.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn update_profile(
        &self,
        user: UserId,
        change: ProfileChange,
    ) -> Result<(UserRecord, Vec<Outgoing>), DomainError> {
        let account = self.user(user).await?;
        self.apply_profile_change(&account, user, change).await
    }

    /// Applies `change` to `account` under the field rules; a photo must be an image
    /// uploaded by `uploader` (the account itself, or the member editing an institution).
    pub(crate) async fn apply_profile_change(
        &self,
        account: &UserRecord,
        uploader: UserId,
        change: ProfileChange,
    ) -> Result<(UserRecord, Vec<Outgoing>), DomainError> {
        let user = account.id;
        let provider_field = change.specialty.is_some() || change.experience_years.is_some();
        let availability = change.availability.is_some();
        if provider_field && account.role != Role::Provider {
            return Err(DomainError::forbidden(
                "field_not_allowed",
                "specialty and experience are for provider accounts",
            ));
        }
        if availability && !matches!(account.role, Role::Provider | Role::Institution) {
            return Err(DomainError::forbidden(
                "field_not_allowed",
                "availability is for provider and institution accounts",
            ));
        }
        if let Some(Some(years)) = change.experience_years {
            if !(0..=80).contains(&years) {
                return Err(DomainError::invalid("invalid_field", "experience_years is 0 to 80"));
            }
        }
        if let Some(Some(photo)) = change.photo_id {
            let upload = self.store().upload_for(photo, uploader).await?;
            match upload {
                Some(u) if u.owner == uploader && u.attachment.content_type.starts_with("image/") => {}
                _ => {
                    return Err(DomainError::invalid(
                        "invalid_photo",
                        "photo_id must name an image you uploaded (POST /v1/uploads)",
                    ))
                }
            }
        }
        let change = ProfileChange {
            display_name: cleaned("display_name", change.display_name, 64)?,
            bio: cleaned("bio", change.bio, 500)?,
            specialty: cleaned("specialty", change.specialty, 64)?,
            ..change
        };
        let updated = self
            .store()
            .update_profile(user, &change)
            .await?
            .ok_or_else(|| DomainError::not_found("user_not_found", "no such user"))?;
        let announced = if updated.profile.availability != account.profile.availability {
            self.announce(user).await?
        } else {
            Vec::new()
        };
        Ok((updated, announced))
    }

    /// Another account as any signed-in user may see it (`user_not_found` for devices).
    pub async fn public_profile(&self, id: UserId) -> Result<UserRecord, DomainError> {
        match self.store().get_user(id).await? {
            Some(u) if u.role != Role::Device => Ok(u),
            _ => Err(DomainError::not_found("user_not_found", "no such user")),
        }
    }

    /// The accounts with these ids (unknown ones left out).
    pub async fn users(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, DomainError> {
        Ok(self.store().get_users(ids).await?)
    }

    /// Accounts matching `query` (a page of at most [`MAX_SEARCH_PAGE`]), and whether more follow.
    pub async fn search_users(&self, mut query: UserQuery) -> Result<(Vec<UserRecord>, bool), DomainError> {
        query.name = clean_text("name", query.name, 64)?;
        query.specialty = clean_text("specialty", query.specialty, 64)?;
        let limit = query.limit.clamp(1, MAX_SEARCH_PAGE) as usize;
        query.limit = limit as u32 + 1;
        let mut users = self.store().search_users(&query).await?;
        let more = users.len() > limit;
        users.truncate(limit);
        Ok((users, more))
    }
}

impl Domain {
    /// An admin sets another account's role and whether it is checked (verified).
    #[tracing::instrument(skip_all, fields(user_id = %admin))]
    pub async fn admin_update_user(
        &self,
        admin: UserId,
        target: UserId,
        role: Option<Role>,
        verified: Option<bool>,
    ) -> Result<UserRecord, DomainError> {
        if self.user(admin).await?.role != Role::Admin {
            return Err(DomainError::forbidden("admin_only", "only admins may change roles and verification"));
        }
        let account = self.user(target).await?;
        let role = role.unwrap_or(account.role);
        let verified_at = match verified {
            Some(true) => Some(account.verified_at.map_or_else(crate::now_ms, |t| t.timestamp_millis())),
            Some(false) => None,
            None => account.verified_at.map(|t| t.timestamp_millis()),
        };
        self.store().set_role(target, role, verified_at).await?;
        tracing::info!(target_id = %target, role = role.as_str(), verified = verified_at.is_some(), "account updated by admin");
        self.user(target).await
    }
}

/// The operator's role change, by login (no admin needed: it runs on the server).
/// Device accounts are made by provisioning, never by this.
pub async fn set_role_by_login(
    store: &parley_store::Store,
    login: &str,
    role: Role,
    verified: bool,
) -> Result<UserRecord, DomainError> {
    if role == Role::Device {
        return Err(DomainError::invalid("role_not_allowed", "device accounts are provisioned, not assigned"));
    }
    let key = crate::accounts::normalize_login(login)
        .ok_or_else(|| DomainError::not_found("user_not_found", "no account with that login"))?;
    let user = store
        .find_user_by_login(&key)
        .await?
        .ok_or_else(|| DomainError::not_found("user_not_found", "no account with that login"))?;
    store.set_role(user.id, role, verified.then(crate::now_ms)).await?;
    store.get_user(user.id).await?.ok_or_else(|| DomainError::not_found("user_not_found", "no such user"))
}
