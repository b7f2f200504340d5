//! Conversation management: groups with owner/admin/member roles, 1:1 on demand,
//! renames and membership changes. Every change is also a `system` message in the
//! conversation, so it is numbered, kept in history and reaches devices through sync.

use parley_store::{ConversationRecord, MemberRecord, NewGroup};
use parley_wire::payloads::Outgoing;
use parley_wire::{ConversationId, UserId};
use serde_json::json;

use crate::messaging::message_outgoing;
use crate::{now_ms, Domain, DomainError};

/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1000;
const AUDIENCES: &[&str] =
    &["user_user", "user_provider", "user_institution", "institution_institution", "admin_provider", "group"];
const CONTEXTS: &[&str] = &["consultation", "service_request", "support", "general"];

/// A conversation to create.
#[derive(Debug, Clone, Default)]
pub struct NewConversation {
    /// `group` or `direct`.
    pub kind: String,
    pub title: Option<String>,
    /// Everyone but the caller; exactly one for `direct`.
    pub members: Vec<UserId>,
    pub audience: Option<String>,
    pub context_type: Option<String>,
    pub context_id: Option<String>,
}

/// A conversation with its members, as a member sees it.
#[derive(Debug, Clone)]
pub struct ConversationDetails {
    pub conversation: ConversationRecord,
    pub members: Vec<MemberRecord>,
}

/// What a member may do, by role.
fn rank(role: &str) -> u8 {
    match role {
        "owner" => 3,
        "admin" => 2,
        _ => 1,
    }
}

impl Domain {
    /// Creates a group (the caller is its owner) or opens the 1:1 conversation with
    /// one other user. Returns the conversation and what members' devices are told.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn create_conversation(
        &self,
        caller: UserId,
        new: NewConversation,
    ) -> Result<(ConversationDetails, Vec<Outgoing>), DomainError> {
        let mut members = new.members.clone();
        members.sort();
        members.dedup();
        members.retain(|m| *m != caller);
        if let Some(a) = &new.audience {
            if !AUDIENCES.contains(&a.as_str()) {
                return Err(DomainError::invalid("invalid_audience", format!("audience is one of {AUDIENCES:?}")));
            }
        }
        match (&new.context_type, &new.context_id) {
            (Some(t), _) if !CONTEXTS.contains(&t.as_str()) => {
                return Err(DomainError::invalid("invalid_context", format!("context type is one of {CONTEXTS:?}")))
            }
            (None, Some(_)) => {
                return Err(DomainError::invalid("invalid_context", "a context id needs a context type"))
            }
            (_, Some(id)) if id.is_empty() || id.len() > 128 => {
                return Err(DomainError::invalid("invalid_context", "context id is 1 to 128 bytes"))
            }
            _ => {}
        }
        let title = clean_title(new.title.as_deref())?;
        match new.kind.as_str() {
            "direct" => {
                let [other] = members.as_slice() else {
                    return Err(DomainError::invalid(
                        "invalid_members",
                        "a direct conversation has exactly one other member",
                    ));
                };
                self.require_user(*other).await?;
                self.require_reach(caller, *other, "unknown_member").await?;
                let id = self.store().ensure_direct(caller, *other, now_ms()).await?;
                Ok((self.conversation(caller, id).await?, Vec::new()))
            }
            "group" => {
                if members.len() + 1 > MAX_GROUP_MEMBERS {
                    return Err(DomainError::invalid(
                        "too_many_members",
                        format!("a group has at most {MAX_GROUP_MEMBERS} members"),
                    ));
                }
                self.require_reach_all(caller, &members, "unknown_member").await?;
                let group = NewGroup {
                    id: ConversationId::new(),
                    title,
                    audience: new.audience.unwrap_or_else(|| "group".into()),
                    context_type: new.context_type,
                    context_id: new.context_id,
                    creator: caller,
                    members: members.clone(),
                    now_ms: now_ms(),
                };
                match self.store().create_group(&group).await {
                    Ok(()) => {}
                    Err(parley_store::StoreError::MissingReference) => {
                        return Err(DomainError::not_found("unknown_member", "a member does not exist"))
                    }
                    Err(e) => return Err(e.into()),
                }
                let posted = self.post_system(caller, group.id, &json!({"action": "created", "by": caller})).await?;
                Ok((self.conversation(caller, group.id).await?, message_outgoing(&posted, None)))
            }
            _ => Err(DomainError::invalid("invalid_kind", "kind is `group` or `direct`")),
        }
    }

    /// A conversation and its members, for a member.
    pub async fn conversation(&self, caller: UserId, id: ConversationId) -> Result<ConversationDetails, DomainError> {
        self.require_member(id, caller).await?;
        let conversation = self
            .store()
            .get_conversation(id)
            .await?
            .ok_or_else(|| DomainError::not_found("conversation_not_found", "no such conversation"))?;
        let members = self.store().members(id).await?;
        Ok(ConversationDetails { conversation, members })
    }

    /// Renames a group (owner or admin).
    pub async fn rename_conversation(
        &self,
        caller: UserId,
        id: ConversationId,
        title: Option<String>,
    ) -> Result<Vec<Outgoing>, DomainError> {
        self.require_group_role(id, caller, 2).await?;
        let title = clean_title(title.as_deref())?;
        self.store().rename_conversation(id, title.as_deref()).await?;
        let posted = self.post_system(caller, id, &json!({"action": "renamed", "by": caller, "title": title})).await?;
        Ok(message_outgoing(&posted, None))
    }

    /// Adds a member (owner or admin; only the owner adds admins).
    pub async fn add_member(
        &self,
        caller: UserId,
        id: ConversationId,
        user: UserId,
        role: Option<String>,
    ) -> Result<Vec<Outgoing>, DomainError> {
        let caller_role = self.require_group_role(id, caller, 2).await?;
        let role = role.unwrap_or_else(|| "member".into());
        check_assignable(&role, &caller_role)?;
        self.require_user(user).await?;
        self.require_reach(caller, user, "unknown_member").await?;
        if self.store().members_of(id).await?.len() >= MAX_GROUP_MEMBERS {
            return Err(DomainError::invalid(
                "too_many_members",
                format!("a group has at most {MAX_GROUP_MEMBERS} members"),
            ));
        }
        if !self.store().add_member(id, user, &role, now_ms()).await? {
            return Err(DomainError::conflict("already_member", "that user is already a member"));
        }
        let posted = self
            .post_system(caller, id, &json!({"action": "member_added", "by": caller, "user_id": user, "role": role}))
            .await?;
        Ok(message_outgoing(&posted, None))
    }

    /// Removes a member, or leaves when `user` is the caller. Admins remove members;
    /// the owner removes anyone. An owner who leaves hands the group to the
    /// longest-standing admin, or else member.
    pub async fn remove_member(
        &self,
        caller: UserId,
        id: ConversationId,
        user: UserId,
    ) -> Result<Vec<Outgoing>, DomainError> {
        let leaving = caller == user;
        let caller_role = if leaving {
            self.require_group_role(id, caller, 1).await?
        } else {
            self.require_group_role(id, caller, 2).await?
        };
        let target = self
            .store()
            .member(id, user)
            .await?
            .ok_or_else(|| DomainError::not_found("member_not_found", "that user is not a member"))?;
        if !leaving && rank(&target.role) >= rank(&caller_role) {
            return Err(DomainError::forbidden("insufficient_role", "only a higher role can remove this member"));
        }
        let action = if leaving { "member_left" } else { "member_removed" };
        // Written while the user is still a member, so its devices learn of it too.
        let posted = self.post_system(caller, id, &json!({"action": action, "by": caller, "user_id": user})).await?;
        self.store().remove_member(id, user).await?;
        let mut out = message_outgoing(&posted, None);
        if leaving && target.role == "owner" {
            let heir = self
                .store()
                .members(id)
                .await?
                .into_iter()
                .max_by_key(|m| (rank(&m.role), std::cmp::Reverse(m.joined_at)));
            if let Some(heir) = heir {
                self.store().set_member_role(id, heir.user_id, "owner").await?;
                let posted = self
                    .post_system(
                        heir.user_id,
                        id,
                        &json!({"action": "role_changed", "by": caller, "user_id": heir.user_id, "role": "owner"}),
                    )
                    .await?;
                out.extend(message_outgoing(&posted, None));
            }
        }
        Ok(out)
    }

    /// Changes a member's role (owner only; handing over `owner` makes the caller an admin).
    pub async fn set_member_role(
        &self,
        caller: UserId,
        id: ConversationId,
        user: UserId,
        role: String,
    ) -> Result<Vec<Outgoing>, DomainError> {
        self.require_group_role(id, caller, 3).await?;
        if !["owner", "admin", "member"].contains(&role.as_str()) {
            return Err(DomainError::invalid("invalid_role", "role is owner, admin or member"));
        }
        if user == caller {
            return Err(DomainError::invalid("invalid_role", "hand ownership to another member instead"));
        }
        if !self.store().set_member_role(id, user, &role).await? {
            return Err(DomainError::not_found("member_not_found", "that user is not a member"));
        }
        if role == "owner" {
            self.store().set_member_role(id, caller, "admin").await?;
        }
        let posted = self
            .post_system(caller, id, &json!({"action": "role_changed", "by": caller, "user_id": user, "role": role}))
            .await?;
        Ok(message_outgoing(&posted, None))
    }

    /// The caller's role in a group, if it is at least `min_rank`.
    async fn require_group_role(
        &self,
        id: ConversationId,
        caller: UserId,
        min_rank: u8,
    ) -> Result<String, DomainError> {
        let member = self.require_member(id, caller).await?;
        let conversation = self
            .store()
            .get_conversation(id)
            .await?
            .ok_or_else(|| DomainError::not_found("conversation_not_found", "no such conversation"))?;
        if conversation.kind != "group" {
            return Err(DomainError::invalid(
                "not_a_group",
                "direct conversations have no roles or membership changes",
            ));
        }
        if rank(&member.role) < min_rank {
            return Err(DomainError::forbidden("insufficient_role", "your role in this group does not allow that"));
        }
        Ok(member.role)
    }

    async fn require_user(&self, user: UserId) -> Result<(), DomainError> {
        if self.store().user_exists(user).await? {
            Ok(())
        } else {
            Err(DomainError::not_found("unknown_member", "no such user"))
        }
    }
}

fn check_assignable(role: &str, caller_role: &str) -> Result<(), DomainError> {
    match role {
        "member" => Ok(()),
        "admin" if caller_role == "owner" => Ok(()),
        "admin" => Err(DomainError::forbidden("insufficient_role", "only the owner adds admins")),
        _ => Err(DomainError::invalid("invalid_role", "a new member is an admin or a member")),
    }
}

fn clean_title(title: Option<&str>) -> Result<Option<String>, DomainError> {
    match title.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) if t.chars().count() > 100 || t.chars().any(char::is_control) => {
            Err(DomainError::invalid("invalid_title", "title is at most 100 characters, without control characters"))
        }
        Some(t) => Ok(Some(t.to_string())),
    }
}
