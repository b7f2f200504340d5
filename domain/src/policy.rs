//! The contact policy: who may start a 1:1 conversation with whom, write in one, or
//! add whom to a group. One rule, [`Domain::may_reach`], chosen by configuration
//! (`messages.contact_policy`). Under `open` it answers at once, without a query.

use parley_store::{ContactState, Target, UserRecord};
use parley_wire::{Role, UserId};

use crate::{Domain, DomainError};

/// Which accounts may reach which, from `messages.contact_policy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContactPolicy {
    /// Anyone may reach anyone.
    #[default]
    Open,
    /// Only accepted contacts reach each other.
    Contacts,
    /// Users reach providers and institutions they have an open consultation with;
    /// those reach the users who consulted them, and each other.
    Consulted,
}

impl ContactPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ContactPolicy::Open => "open",
            ContactPolicy::Contacts => "contacts",
            ContactPolicy::Consulted => "consulted",
        }
    }
}

/// Providers and institutions: the accounts users consult.
pub(crate) fn is_professional(role: Role) -> bool {
    matches!(role, Role::Provider | Role::Institution)
}

impl Domain {
    /// Whether `sender` may reach `recipient` (start a 1:1 with it, write in their 1:1,
    /// or add it to a group) under the configured policy.
    ///
    /// Under every policy admins may reach anyone, and anyone may answer an admin:
    /// write to an admin in a 1:1 conversation that already exists between them.
    /// Then, by policy:
    /// - `open`: everyone reaches everyone;
    /// - `contacts`: both are accepted contacts;
    /// - `consulted`: a user reaches a provider or institution it has an open
    ///   consultation with; a provider or institution reaches a user who consulted it
    ///   (a consultation that was opened, open or closed since); providers and
    ///   institutions reach each other; users do not reach users.
    pub async fn may_reach(&self, sender: &UserRecord, recipient: &UserRecord) -> Result<(), DomainError> {
        let policy = self.limits().contact_policy;
        if policy == ContactPolicy::Open || sender.role == Role::Admin {
            return Ok(());
        }
        if recipient.role == Role::Admin && self.store().direct_between(sender.id, recipient.id).await?.is_some() {
            return Ok(());
        }
        match policy {
            ContactPolicy::Open => Ok(()),
            ContactPolicy::Contacts => {
                if self.store().contact_state(sender.id, recipient.id).await? == ContactState::Contacts {
                    Ok(())
                } else {
                    Err(DomainError::forbidden(
                        "not_a_contact",
                        "only contacts may write to each other here: send a contact request (POST /v1/contacts) \
                         and write once it is accepted",
                    ))
                }
            }
            ContactPolicy::Consulted => self.consulted_reach(sender, recipient).await,
        }
    }

    async fn consulted_reach(&self, sender: &UserRecord, recipient: &UserRecord) -> Result<(), DomainError> {
        if recipient.role == Role::Admin {
            return Err(DomainError::forbidden(
                "admin_reply_only",
                "admins are answered, not approached: reply in a conversation an admin started",
            ));
        }
        match (is_professional(sender.role), is_professional(recipient.role)) {
            (true, true) => Ok(()),
            (false, true) => {
                if self.store().consultation_standing(sender.id, recipient.id).await?.open {
                    Ok(())
                } else {
                    Err(DomainError::forbidden(
                        "consultation_required",
                        "writing to a provider needs an open consultation: request one (POST /v1/consultations) \
                         and write once the provider accepts it",
                    ))
                }
            }
            (true, false) => {
                if self.store().consultation_standing(recipient.id, sender.id).await?.opened {
                    Ok(())
                } else {
                    Err(DomainError::forbidden(
                        "consultation_required",
                        "providers write to the users who consulted them: accept this user's consultation \
                         request first",
                    ))
                }
            }
            (false, false) => Err(DomainError::forbidden(
                "provider_only",
                "users write to the providers and institutions they consult, not to other users",
            )),
        }
    }

    /// [`Domain::may_reach`] by ids. Free under `open`; otherwise loads both accounts
    /// (an unknown `recipient` is a `not_found` error with code `unknown`).
    pub(crate) async fn require_reach(
        &self,
        sender: UserId,
        recipient: UserId,
        unknown: &'static str,
    ) -> Result<(), DomainError> {
        self.require_reach_all(sender, &[recipient], unknown).await
    }

    /// [`Domain::may_reach`] from `sender` to each of `recipients` (a group's new
    /// members). Free under `open`; otherwise one query loads every account, then
    /// each pair is checked.
    pub(crate) async fn require_reach_all(
        &self,
        sender: UserId,
        recipients: &[UserId],
        unknown: &'static str,
    ) -> Result<(), DomainError> {
        if self.limits().contact_policy == ContactPolicy::Open || recipients.is_empty() {
            return Ok(());
        }
        let mut ids = recipients.to_vec();
        ids.push(sender);
        let accounts = self.store().get_users(&ids).await?;
        let find = |id: UserId| accounts.iter().find(|u| u.id == id);
        let from = find(sender).ok_or_else(|| DomainError::not_found("user_not_found", "no such user"))?;
        for recipient in recipients {
            let to = find(*recipient).ok_or_else(|| DomainError::not_found(unknown, "no such user"))?;
            self.may_reach(from, to).await?;
        }
        Ok(())
    }

    /// The policy for a message: to a user, or into a 1:1 conversation the sender is a
    /// member of, the sender must reach the other side. Groups are checked when members
    /// join, not per message. Callers skip this under `open`.
    pub(crate) async fn require_reach_for_message(&self, sender: UserId, target: &Target) -> Result<(), DomainError> {
        let conversation = match *target {
            Target::Direct(to) => return self.require_reach(sender, to, "unknown_recipient").await,
            Target::Conversation(c) => c,
        };
        match self.store().get_conversation(conversation).await? {
            Some(c) if c.kind == "direct" => {
                let members = self.store().members_of(conversation).await?;
                // A non-member is refused by the store, exactly as for any conversation.
                if !members.contains(&sender) {
                    return Ok(());
                }
                match members.into_iter().find(|m| *m != sender) {
                    Some(other) => self.require_reach(sender, other, "unknown_recipient").await,
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}
