//! One uplink in, the downlinks it causes out. No MQTT client here, so tests call
//! it directly against a real database.

use parley_domain::{Domain, DomainError, Stored};
use parley_wire::payloads::{AckError, ErrorBody, SendMessage};
use parley_wire::{topics, UserId};

/// A message to publish on a user's downlink topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downlink {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Downlink {
    fn json(topic: String, body: &impl serde::Serialize) -> Downlink {
        // Serialising our own payload types cannot fail.
        Downlink {
            topic,
            payload: serde_json::to_vec(body).unwrap_or_default(),
        }
    }
}

/// Decodes the uplink on `topic`, applies the rules, and says what to publish:
/// the acknowledgement (or error) for the sender and the event for the recipient.
pub async fn handle_uplink(domain: &Domain, topic: &str, payload: &[u8]) -> Vec<Downlink> {
    let Some(uplink) = topics::parse_uplink(topic) else {
        tracing::warn!(topic, "uplink on a topic the bridge does not know; dropped");
        return Vec::new();
    };
    let sender = uplink.user;
    match uplink.kind {
        "msg" => send_message(domain, sender, payload).await,
        other => {
            tracing::info!(user_id = %sender, kind = other, "unknown uplink kind");
            vec![error(
                sender,
                None,
                "unknown_topic",
                format!("nothing is published on from/{{uid}}/{other}"),
            )]
        }
    }
}

async fn send_message(domain: &Domain, sender: UserId, payload: &[u8]) -> Vec<Downlink> {
    let msg: SendMessage = match serde_json::from_slice(payload) {
        Ok(m) => m,
        Err(e) => {
            // Answer with the client's id when the JSON has one, so it can match the error.
            let id = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
            return vec![error(
                sender,
                id,
                "invalid_payload",
                format!("payload is not a valid message: {e}"),
            )];
        }
    };
    let client_id = msg.id.clone();
    let to = msg.to;
    match domain.send_direct_message(sender, msg).await {
        Ok(stored) => {
            let fresh = matches!(stored, Stored::New(_));
            let message = stored.into_inner();
            tracing::debug!(user_id = %sender, conversation_id = %message.conversation_id, seq = message.seq, fresh, "message stored");
            let recipient = if fresh {
                Some(to)
            } else {
                recipient_of(domain, &message, sender).await
            };
            let mut out = vec![Downlink::json(topics::ack(sender), &message.ack())];
            // A retry delivers again too: the first attempt may have been cut off
            // before its delivery; devices drop repeats by message id.
            if let Some(recipient) = recipient {
                out.push(Downlink::json(topics::message(recipient), &message));
            }
            out
        }
        Err(e) => {
            if matches!(e, DomainError::Store(_) | DomainError::Internal(_)) {
                tracing::error!(user_id = %sender, error = %e, "message could not be stored");
            }
            vec![error(sender, Some(client_id), e.code(), e.public_message())]
        }
    }
}

/// The other member of the 1:1 conversation the message belongs to.
async fn recipient_of(
    domain: &Domain,
    message: &parley_wire::payloads::Message,
    sender: UserId,
) -> Option<UserId> {
    match domain.conversation_members(message.conversation_id).await {
        Ok(members) => members.into_iter().find(|m| *m != sender),
        Err(e) => {
            tracing::error!(error = %e, "members of a conversation could not be read");
            None
        }
    }
}

fn error(sender: UserId, id: Option<String>, code: &str, message: String) -> Downlink {
    let body = AckError {
        id,
        error: ErrorBody {
            code: code.to_string(),
            message,
        },
    };
    Downlink::json(topics::ack(sender), &body)
}
