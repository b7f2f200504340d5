//! Institutions: an organisation is an account (role `institution`) that nobody logs
//! into. Its members (`owner`, `admin`, `member`) act for it through sign-ins they
//! open from their own: the institution's tokens name the member as actor, end with
//! the member's sign-in, and end when the member leaves. Owners and admins manage
//! the members, the profile and the institution's kiosk devices.

use parley_store::{InstitutionMember, MemberChange, NewUser, ProfileChange, StoreError, UserRecord};
use parley_wire::payloads::Outgoing;
use parley_wire::{Role, UserId};
use uuid::Uuid;

use crate::accounts::{normalize_username, ClientInfo};
use crate::sessions::{revocation, Revoked, Session};
use crate::{now_ms, Domain, DomainError};

/// Stored as the password hash of accounts nobody logs into with a password
/// (institutions, devices): it is not a PHC string, so no password matches it.
pub(crate) const NO_PASSWORD: &str = "!";

/// An institution to create.
#[derive(Debug, Clone, Default)]
pub struct NewInstitution {
    pub username: String,
    pub display_name: String,
    pub bio: Option<String>,
}

/// What members may do, by role.
fn rank(role: &str) -> u8 {
    match role {
        "owner" => 3,
        "admin" => 2,
        _ => 1,
    }
}

fn check_role(role: &str) -> Result<(), DomainError> {
    match role {
        "owner" | "admin" | "member" => Ok(()),
        _ => Err(DomainError::invalid("invalid_role", "role is `owner`, `admin` or `member`")),
    }
}

fn last_owner() -> DomainError {
    DomainError::conflict("last_owner", "an institution keeps at least one owner; make another member owner first")
}

fn not_member() -> DomainError {
    DomainError::not_found("member_not_found", "that account is not a member of this institution")
}

impl Domain {
    /// Creates an institution with the caller as its owner. Checked institutions are
    /// marked verified by a platform admin, as providers are.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn create_institution(&self, caller: UserId, new: NewInstitution) -> Result<UserRecord, DomainError> {
        let founder = self.user(caller).await?;
        if !matches!(founder.role, Role::User | Role::Provider | Role::Admin) {
            return Err(DomainError::forbidden("role_not_allowed", "institutions are created by people's accounts"));
        }
        let username = normalize_username(&new.username)?;
        let display_name = crate::profiles::clean_text("display_name", Some(new.display_name), 64)?
            .ok_or_else(|| DomainError::invalid("invalid_field", "display_name is required"))?;
        let bio = crate::profiles::clean_text("bio", new.bio, 500)?;
        let account = NewUser {
            id: UserId::new(),
            username: Some(username),
            email: None,
            phone: None,
            display_name: Some(display_name),
            password_hash: NO_PASSWORD.into(),
            role: Role::Institution,
            created_at_ms: now_ms(),
        };
        match self.store().create_institution(&account, caller).await {
            Ok(()) => {}
            Err(StoreError::Conflict(field)) => {
                return Err(DomainError::conflict("identifier_taken", format!("this {field} is already registered")))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(institution_id = %account.id, "institution created");
        if bio.is_some() {
            let change = ProfileChange { bio: Some(bio), ..Default::default() };
            return Ok(self.update_profile(account.id, change).await?.0);
        }
        self.user(account.id).await
    }

    /// The institution account `id` (`institution_not_found` for any other account).
    pub async fn institution(&self, id: UserId) -> Result<UserRecord, DomainError> {
        match self.store().get_user(id).await? {
            Some(u) if u.role == Role::Institution => Ok(u),
            _ => Err(DomainError::not_found("institution_not_found", "no such institution")),
        }
    }

    /// The caller's role in `institution`, which must rank at least `least`.
    pub(crate) async fn institution_rank(
        &self,
        institution: UserId,
        caller: UserId,
        least: &str,
    ) -> Result<String, DomainError> {
        self.institution(institution).await?;
        match self.store().institution_role(institution, caller).await? {
            Some(role) if rank(&role) >= rank(least) => Ok(role),
            Some(_) => Err(DomainError::forbidden(
                "institution_role_required",
                format!("this needs the `{least}` role (or higher) in the institution"),
            )),
            None => Err(DomainError::forbidden("not_institution_member", "you are not a member of this institution")),
        }
    }

    /// The members of an institution, with their accounts (members only).
    pub async fn institution_members(
        &self,
        caller: UserId,
        institution: UserId,
    ) -> Result<Vec<(InstitutionMember, UserRecord)>, DomainError> {
        self.institution_rank(institution, caller, "member").await?;
        let members = self.store().institution_members(institution).await?;
        self.with_accounts(members, |m| m.user).await
    }

    /// The institutions the caller belongs to, with its membership in each.
    pub async fn my_institutions(&self, caller: UserId) -> Result<Vec<(InstitutionMember, UserRecord)>, DomainError> {
        let memberships = self.store().institutions_of(caller).await?;
        self.with_accounts(memberships, |m| m.institution).await
    }

    async fn with_accounts(
        &self,
        members: Vec<InstitutionMember>,
        key: impl Fn(&InstitutionMember) -> UserId,
    ) -> Result<Vec<(InstitutionMember, UserRecord)>, DomainError> {
        let ids: Vec<UserId> = members.iter().map(&key).collect();
        let accounts = self.store().get_users(&ids).await?;
        Ok(members
            .into_iter()
            .filter_map(|m| accounts.iter().find(|a| a.id == key(&m)).cloned().map(|a| (m, a)))
            .collect())
    }

    /// Adds a person's account as a member. Admins add members and admins; only
    /// owners add owners.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn add_institution_member(
        &self,
        caller: UserId,
        institution: UserId,
        user: UserId,
        role: &str,
    ) -> Result<(InstitutionMember, UserRecord), DomainError> {
        check_role(role)?;
        let mine = self.institution_rank(institution, caller, "admin").await?;
        if rank(role) > rank(&mine) {
            return Err(DomainError::forbidden("institution_role_required", "only owners make owners"));
        }
        let account = match self.store().get_user(user).await? {
            Some(a) if matches!(a.role, Role::User | Role::Provider | Role::Admin) => a,
            Some(_) => {
                return Err(DomainError::invalid(
                    "invalid_member",
                    "members are people's accounts, not devices or institutions",
                ))
            }
            None => return Err(DomainError::not_found("user_not_found", "no such user")),
        };
        let now = now_ms();
        match self.store().add_institution_member(institution, user, role, caller, now).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(DomainError::conflict("already_member", "that account is already a member"))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(institution_id = %institution, member = %user, role, "institution member added");
        let added_at = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
        Ok((InstitutionMember { institution, user, role: role.to_string(), added_at }, account))
    }

    /// Changes a member's role. Only owners touch owners (or make them); the last
    /// owner cannot be demoted.
    pub async fn set_institution_member_role(
        &self,
        caller: UserId,
        institution: UserId,
        user: UserId,
        role: &str,
    ) -> Result<(), DomainError> {
        check_role(role)?;
        let mine = self.institution_rank(institution, caller, "admin").await?;
        let theirs = self.store().institution_role(institution, user).await?.ok_or_else(not_member)?;
        if rank(role).max(rank(&theirs)) > rank(&mine) {
            return Err(DomainError::forbidden("institution_role_required", "only owners change or make owners"));
        }
        match self.store().set_institution_member_role(institution, user, role).await? {
            MemberChange::Done => Ok(()),
            MemberChange::NotFound => Err(not_member()),
            MemberChange::LastOwner => Err(last_owner()),
        }
    }

    /// Removes a member (anyone may leave; admins remove members and admins, owners
    /// anyone), ending the sign-ins it opened for the institution.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn remove_institution_member(
        &self,
        caller: UserId,
        institution: UserId,
        user: UserId,
    ) -> Result<Revoked, DomainError> {
        if caller != user {
            let mine = self.institution_rank(institution, caller, "admin").await?;
            let theirs = self.store().institution_role(institution, user).await?.ok_or_else(not_member)?;
            if rank(&theirs) > rank(&mine) {
                return Err(DomainError::forbidden("institution_role_required", "only owners remove owners"));
            }
        }
        match self.store().remove_institution_member(institution, user).await? {
            MemberChange::Done => {}
            MemberChange::NotFound => return Err(not_member()),
            MemberChange::LastOwner => return Err(last_owner()),
        }
        let ended = self.store().revoke_acting_sessions(institution, user, "left_institution", now_ms()).await?;
        tracing::info!(institution_id = %institution, member = %user, sign_ins = ended.len(), "institution member removed");
        let count = ended.len();
        let downlinks = if ended.is_empty() { Vec::new() } else { vec![revocation(institution, ended)] };
        Ok(Revoked { count, downlinks })
    }

    /// Changes the institution's profile (owners and admins). The photo may be an
    /// image the editing member uploaded. A change of availability is announced.
    pub async fn update_institution(
        &self,
        caller: UserId,
        institution: UserId,
        change: ProfileChange,
    ) -> Result<(UserRecord, Vec<Outgoing>), DomainError> {
        self.institution_rank(institution, caller, "admin").await?;
        let account = self.institution(institution).await?;
        self.apply_profile_change(&account, caller, change).await
    }

    /// Opens a sign-in of the institution for the calling member, from the member's
    /// own sign-in `session` (which must be a person's, not itself an institution's).
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn act_for_institution(
        &self,
        caller: UserId,
        session: Uuid,
        institution: UserId,
        client: &ClientInfo,
    ) -> Result<Session, DomainError> {
        self.institution_rank(institution, caller, "member").await?;
        let ends = self
            .store()
            .session_end(caller, session, now_ms())
            .await?
            .ok_or_else(|| DomainError::unauthorized("session_revoked", "this sign-in has ended; log in again"))?;
        let account = self.institution(institution).await?;
        tracing::info!(institution_id = %institution, "member acts for institution");
        self.open_session_as(account, Some((caller, session, ends)), client).await
    }
}
