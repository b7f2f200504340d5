//! Delivery and read receipts (as per-member watermarks) and unread counts.

use parley_wire::payloads::{Event, Outgoing, Receipt, ReceiptUpdate, Unread};
use parley_wire::{topics, ConversationId, UserId};

use crate::{now_ms, Domain, DomainError};

impl Domain {
    /// Moves `user`'s delivered/read marks in a conversation forward. When they
    /// move, every member's devices get a `receipt` event (the sender sees its
    /// ticks change, the user's other devices its read state), and the user's
    /// devices get the new unread counts.
    #[tracing::instrument(skip_all, fields(user_id = %user, conversation_id = %update.conversation_id))]
    pub async fn record_receipt(&self, user: UserId, update: &ReceiptUpdate) -> Result<Vec<Outgoing>, DomainError> {
        if update.delivered_seq.is_none() && update.read_seq.is_none() {
            return Err(DomainError::invalid("invalid_receipt", "give delivered_seq, read_seq or both"));
        }
        if update.delivered_seq.is_some_and(|s| s < 0) || update.read_seq.is_some_and(|s| s < 0) {
            return Err(DomainError::invalid("invalid_receipt", "sequence numbers are ≥ 0"));
        }
        let conversation = update.conversation_id;
        let Some((member, moved)) =
            self.store().advance_receipts(conversation, user, update.delivered_seq, update.read_seq).await?
        else {
            return Err(DomainError::not_found("conversation_not_found", "no such conversation"));
        };
        if !moved {
            return Ok(Vec::new());
        }
        let receipt = Receipt {
            conversation_id: conversation,
            user_id: user,
            delivered_seq: member.last_delivered_seq,
            read_seq: member.last_read_seq,
        };
        let members = self.store().members_of(conversation).await?;
        let body = serde_json::to_string(&receipt).map_err(|e| DomainError::Internal(e.to_string()))?;
        let taken = self.store().append_events(&members, "receipt", Some(conversation), &body, now_ms()).await?;
        let mut out: Vec<Outgoing> = taken
            .into_iter()
            .map(|(member, seq)| Outgoing::new(member, topics::RECEIPT, &Event::new(seq, "receipt", &receipt)))
            .collect();
        out.push(Outgoing::new(user, topics::UNREAD, &self.unread_in(user, conversation).await?));
        Ok(out)
    }

    /// `user`'s unread count in `conversation` and in total.
    pub async fn unread_in(&self, user: UserId, conversation: ConversationId) -> Result<Unread, DomainError> {
        let counts = self.store().unread_counts_for(user).await?;
        let unread = counts.iter().find(|(c, _)| *c == conversation).map_or(0, |(_, n)| *n);
        Ok(Unread { conversation_id: conversation, unread, total: counts.iter().map(|(_, n)| n).sum() })
    }

    /// `user`'s unread counts per conversation (only those with unread messages) and in total.
    pub async fn unread(&self, user: UserId) -> Result<(Vec<(ConversationId, i64)>, i64), DomainError> {
        let counts: Vec<_> = self.store().unread_counts_for(user).await?.into_iter().filter(|(_, n)| *n > 0).collect();
        let total = counts.iter().map(|(_, n)| n).sum();
        Ok((counts, total))
    }
}

/// Who, besides its sender, got and read one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReceipts {
    pub delivered: Vec<UserId>,
    pub read: Vec<UserId>,
}

impl Domain {
    /// The members whose watermarks passed a message (members only ask).
    pub async fn message_receipts(
        &self,
        caller: UserId,
        id: parley_wire::MessageId,
    ) -> Result<MessageReceipts, DomainError> {
        let message = self.visible_message(caller, id).await?;
        let members = self.store().members(message.conversation_id).await?;
        let others = members.iter().filter(|m| m.user_id != message.sender_id);
        Ok(MessageReceipts {
            delivered: others.clone().filter(|m| m.last_delivered_seq >= message.seq).map(|m| m.user_id).collect(),
            read: others.filter(|m| m.last_read_seq >= message.seq).map(|m| m.user_id).collect(),
        })
    }
}
