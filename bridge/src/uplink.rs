//! One uplink in, the downlinks it causes out. No MQTT client here, so tests call
//! it directly against a real database.

use parley_domain::{message_outgoing, Domain, DomainError, Stored};
use parley_wire::payloads::{
    AckError, ErrorBody, Outgoing, ReceiptUpdate, SendMessage, SyncRequest,
};
use parley_wire::{topics, UserId};
use serde::de::DeserializeOwned;
use serde_json::json;

/// Decodes the uplink on `topic`, applies the rules, and says what to publish.
pub async fn handle_uplink(domain: &Domain, topic: &str, payload: &[u8]) -> Vec<Outgoing> {
    let Some(uplink) = topics::parse_uplink(topic) else {
        tracing::warn!(topic, "uplink on a topic the bridge does not know; dropped");
        return Vec::new();
    };
    let sender = uplink.user;
    match uplink.kind {
        topics::MSG => send_message(domain, sender, payload).await,
        topics::RECEIPT => match decode::<ReceiptUpdate>(payload) {
            Ok(update) => match domain.record_receipt(sender, &update).await {
                Ok(out) => out,
                Err(e) => vec![refusal(sender, topics::ERROR, update.id, &e)],
            },
            Err((id, message)) => {
                vec![error(sender, topics::ERROR, id, "invalid_payload", message)]
            }
        },
        topics::SYNC => match decode::<SyncRequest>(payload) {
            Ok(request) => match domain.sync(sender, request.after, request.limit).await {
                Ok(mut answer) => {
                    answer.id = request.id;
                    vec![Outgoing::new(sender, topics::SYNC, &answer)]
                }
                Err(e) => vec![refusal(sender, topics::ERROR, request.id, &e)],
            },
            Err((id, message)) => {
                vec![error(sender, topics::ERROR, id, "invalid_payload", message)]
            }
        },
        other => {
            tracing::info!(user_id = %sender, kind = other, "unknown uplink kind");
            let message = format!("nothing is published on from/{{uid}}/{other}");
            vec![error(sender, topics::ACK, None, "unknown_topic", message)]
        }
    }
}

async fn send_message(domain: &Domain, sender: UserId, payload: &[u8]) -> Vec<Outgoing> {
    let msg: SendMessage = match decode(payload) {
        Ok(m) => m,
        Err((id, message)) => {
            return vec![error(sender, topics::ACK, id, "invalid_payload", message)]
        }
    };
    let client_id = msg.id.clone();
    match domain.send_message(sender, msg).await {
        Ok(stored) => {
            let fresh = matches!(stored, Stored::New(_));
            let posted = stored.into_inner();
            tracing::debug!(user_id = %sender, conversation_id = %posted.message.conversation_id, seq = posted.message.seq, fresh, "message stored");
            // A retry delivers again too: the first attempt may have been cut off
            // before its delivery; devices drop repeats by message id.
            message_outgoing(&posted, Some(sender))
        }
        Err(e) => vec![refusal(sender, topics::ACK, Some(client_id), &e)],
    }
}

/// The payload as `T`, or the request's `id` (when readable) and why it is not a `T`.
fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, (Option<String>, String)> {
    serde_json::from_slice(payload).map_err(|e| {
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_string));
        (id, format!("payload is not valid here: {e}"))
    })
}

fn refusal(sender: UserId, channel: &'static str, id: Option<String>, e: &DomainError) -> Outgoing {
    if matches!(e, DomainError::Store(_) | DomainError::Internal(_)) {
        tracing::error!(user_id = %sender, error = %e, "uplink failed");
    }
    error(sender, channel, id, e.code(), e.public_message())
}

fn error(
    sender: UserId,
    channel: &'static str,
    id: Option<String>,
    code: &str,
    message: String,
) -> Outgoing {
    if channel == topics::ACK {
        let body = AckError {
            id,
            error: ErrorBody {
                code: code.to_string(),
                message,
            },
        };
        return Outgoing::new(sender, channel, &body);
    }
    Outgoing::new(
        sender,
        channel,
        &json!({ "id": id, "error": { "code": code, "message": message } }),
    )
}
