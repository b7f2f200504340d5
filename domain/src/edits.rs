//! Changing sent messages: edit and delete (sender only; deletion for oneself is
//! anyone's), and emoji reactions. Every change reaches members' devices as an
//! event and through sync.

use std::collections::BTreeMap;

use parley_store::EditRecord;
use parley_wire::payloads::{Event, Message, Outgoing};
use parley_wire::{topics, MessageId, UserId};
use serde_json::json;

use crate::{now_ms, Domain, DomainError};

/// Longest emoji (or short reaction text) accepted, in bytes.
const MAX_EMOJI_BYTES: usize = 32;

impl Domain {
    /// A message the caller may see (it belongs to the conversation).
    pub async fn visible_message(&self, caller: UserId, id: MessageId) -> Result<Message, DomainError> {
        let not_found = || DomainError::not_found("message_not_found", "no such message");
        let message = self.store().message(id).await?.ok_or_else(not_found)?;
        if !self.store().is_member(message.conversation_id, caller).await? {
            return Err(not_found());
        }
        Ok(message)
    }

    /// Replaces the text of one of the caller's own messages; the old text is kept.
    #[tracing::instrument(skip_all, fields(user_id = %caller, message_id = %id))]
    pub async fn edit_message(&self, caller: UserId, id: MessageId, text: &str) -> Result<Vec<Outgoing>, DomainError> {
        let message = self.visible_message(caller, id).await?;
        check_own_live(&message, caller)?;
        self.check_text(text)?;
        let (posted, hidden_for) = self
            .store()
            .edit_message(id, caller, text, now_ms())
            .await?
            .ok_or_else(|| DomainError::conflict("message_deleted", "the message was deleted"))?;
        // Who deleted the message for themselves keeps seeing a tombstone.
        let mut hidden = posted.message.clone();
        parley_store::hide(&mut hidden);
        Ok(posted
            .deliveries
            .iter()
            .map(|(user, seq)| {
                let shown = if hidden_for.contains(user) { &hidden } else { &posted.message };
                Outgoing::new(*user, topics::MSG, &Event::new(*seq, "message_edited", shown))
            })
            .collect())
    }

    /// Deletes a message for everyone (its sender only; a tombstone keeps its seq)
    /// or, with `for_everyone = false`, for the caller alone.
    #[tracing::instrument(skip_all, fields(user_id = %caller, message_id = %id))]
    pub async fn delete_message(
        &self,
        caller: UserId,
        id: MessageId,
        for_everyone: bool,
    ) -> Result<Vec<Outgoing>, DomainError> {
        let message = self.visible_message(caller, id).await?;
        let body = json!({"conversation_id": message.conversation_id, "message_id": id, "seq": message.seq});
        if !for_everyone {
            let taken = self.store().hide_message(&message, caller, &body.to_string(), now_ms()).await?;
            return Ok(per_member(&taken, "message_hidden", &body));
        }
        check_own_live(&message, caller)?;
        let posted = self
            .store()
            .delete_message(id, caller, &body.to_string(), now_ms())
            .await?
            .ok_or_else(|| DomainError::conflict("message_deleted", "the message was already deleted"))?;
        Ok(per_member(&posted.deliveries, "message_deleted", &body))
    }

    /// Adds (or removes) one emoji of the caller on a message; one of each emoji per user.
    #[tracing::instrument(skip_all, fields(user_id = %caller, message_id = %id))]
    pub async fn react(
        &self,
        caller: UserId,
        id: MessageId,
        emoji: &str,
        add: bool,
    ) -> Result<Vec<Outgoing>, DomainError> {
        if emoji.is_empty()
            || emoji.len() > MAX_EMOJI_BYTES
            || emoji.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(DomainError::invalid(
                "invalid_emoji",
                format!("emoji is 1 to {MAX_EMOJI_BYTES} bytes without spaces"),
            ));
        }
        let message = self.visible_message(caller, id).await?;
        if message.deleted {
            return Err(DomainError::conflict("message_deleted", "the message was deleted"));
        }
        let body = |counts: &BTreeMap<String, i64>| {
            json!({
                "conversation_id": message.conversation_id, "message_id": id, "user_id": caller,
                "emoji": emoji, "op": if add { "add" } else { "remove" }, "counts": counts,
            })
            .to_string()
        };
        let Some(change) = self.store().react(&message, caller, emoji, add, now_ms(), body).await? else {
            return Ok(Vec::new());
        };
        let data: serde_json::Value = serde_json::from_str(&body(&change.counts)).unwrap_or_default();
        Ok(per_member(&change.deliveries, "reaction", &data))
    }

    /// Earlier texts of a message, for members.
    pub async fn message_edits(&self, caller: UserId, id: MessageId) -> Result<Vec<EditRecord>, DomainError> {
        self.visible_message(caller, id).await?;
        Ok(self.store().edits_of(id).await?)
    }

    /// Who reacted with what, for members.
    pub async fn message_reactions(&self, caller: UserId, id: MessageId) -> Result<Vec<(UserId, String)>, DomainError> {
        self.visible_message(caller, id).await?;
        Ok(self.store().reactions_of(id).await?)
    }
}

fn check_own_live(message: &Message, caller: UserId) -> Result<(), DomainError> {
    if message.sender_id != caller || message.kind == "system" {
        return Err(DomainError::forbidden("not_sender", "only the sender can change this message"));
    }
    if message.deleted {
        return Err(DomainError::conflict("message_deleted", "the message was deleted"));
    }
    Ok(())
}

/// The same event for each member, under that member's own event number.
fn per_member(deliveries: &[(UserId, i64)], kind: &str, data: &impl serde::Serialize) -> Vec<Outgoing> {
    deliveries.iter().map(|(user, seq)| Outgoing::new(*user, topics::MSG, &Event::new(*seq, kind, data))).collect()
}
