//! A member's own settings for a conversation (pinned, muted, archived,
//! favourite, ringtone, blocked), kept in sync across the member's devices.

use parley_store::{MemberSettings, SettingsChange};
use parley_wire::payloads::{Event, Outgoing};
use parley_wire::{topics, ConversationId, UserId};
use serde_json::json;

use crate::{now_ms, Domain, DomainError};

/// The store's change from what a device or app sent.
pub fn settings_change(update: &parley_wire::payloads::SettingsUpdate) -> SettingsChange {
    SettingsChange {
        pinned: update.pinned,
        archived: update.archived,
        favourite: update.favourite,
        muted_until_ms: update.muted_until.map(|m| m.map(|t| t.timestamp_millis())),
        ringtone: update.ringtone.clone(),
        blocked: update.blocked,
    }
}

impl Domain {
    /// Changes the caller's settings in a conversation; its devices get a `settings` event.
    /// Blocking is for 1:1 conversations: it stops messages both ways.
    #[tracing::instrument(skip_all, fields(user_id = %caller, conversation_id = %conversation))]
    pub async fn update_settings(
        &self,
        caller: UserId,
        conversation: ConversationId,
        change: SettingsChange,
    ) -> Result<(MemberSettings, Vec<Outgoing>), DomainError> {
        if change.blocked.is_some() {
            let record = self.store().get_conversation(conversation).await?;
            if record.is_some_and(|c| c.kind != "direct") {
                return Err(DomainError::invalid(
                    "not_direct",
                    "blocking is for 1:1 conversations; leave a group instead",
                ));
            }
        }
        if let Some(Some(ringtone)) = &change.ringtone {
            if ringtone.is_empty() || ringtone.len() > 200 || ringtone.chars().any(char::is_control) {
                return Err(DomainError::invalid("invalid_ringtone", "ringtone is 1 to 200 bytes"));
            }
        }
        let body = |s: &MemberSettings| json!({ "conversation_id": conversation, "settings": s }).to_string();
        let (settings, seq) = self
            .store()
            .update_member_settings(conversation, caller, &change, now_ms(), body)
            .await?
            .ok_or_else(|| DomainError::not_found("conversation_not_found", "no such conversation"))?;
        let event = Event::new(seq, "settings", &json!({ "conversation_id": conversation, "settings": settings }));
        Ok((settings, vec![Outgoing::new(caller, topics::SETTINGS, &event)]))
    }
}
