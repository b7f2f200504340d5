//! JSON payloads carried on the topics. Field names are the contract: never rename one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ConversationId, MessageId, UserId};

/// `from/{uid}/msg`: a device sends a message. `id` is chosen by the device and makes
/// retries harmless: the same `id` from the same user is stored once.
/// Unknown fields are ignored, so newer apps keep working against this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendMessage {
    pub id: String,
    pub to: UserId,
    pub text: String,
}

/// `to/{uid}/ack`: the message is stored ("sent", one tick).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Ack {
    /// The device's own id for the message.
    pub id: String,
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    /// Place of the message in its conversation, from 1, without gaps.
    pub seq: i64,
    pub sent_at: DateTime<Utc>,
}

/// `to/{uid}/ack`: what the device sent was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckError {
    /// The device's id for the message, when it could be read.
    pub id: Option<String>,
    pub error: ErrorBody,
}

/// A machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// A stored message, as devices receive it on `to/{uid}/msg` and as history returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub sender_id: UserId,
    /// The sender device's own id for the message.
    pub client_id: String,
    /// `text`, or `system` for events the server writes into the conversation.
    pub kind: String,
    pub text: String,
    pub sent_at: DateTime<Utc>,
}

impl Message {
    /// The acknowledgement the sender gets for this message.
    pub fn ack(&self) -> Ack {
        Ack {
            id: self.client_id.clone(),
            message_id: self.id,
            conversation_id: self.conversation_id,
            seq: self.seq,
            sent_at: self.sent_at,
        }
    }
}
