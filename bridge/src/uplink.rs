//! One uplink in, the downlinks it causes out. No MQTT client here, so tests call
//! it directly against a real database.

use parley_domain::{message_outgoing, Domain, DomainError, Posted, Stored};
use parley_store::Turn;
use parley_wire::payloads::{
    AckError, DeleteMessage, EditMessage, ErrorBody, GatePresence, Outgoing, PresenceUpdate, React, ReceiptUpdate,
    SendMessage, SettingsUpdate, SyncRequest, TypingUpdate,
};
use parley_wire::{topics, UserId};
use serde::de::DeserializeOwned;

/// The uplink's payload as `$t`, or an `invalid_payload` error to the sender.
macro_rules! decode_or_refuse {
    ($sender:expr, $payload:expr, $t:ty) => {
        match decode::<$t>($payload) {
            Ok(v) => v,
            Err((id, message)) => return vec![error($sender, topics::ERROR, id, "invalid_payload", message)],
        }
    };
}

/// Decodes the uplink on `topic`, applies the rules, and says what to publish.
pub async fn handle_uplink(domain: &Domain, topic: &str, payload: &[u8]) -> Vec<Outgoing> {
    if let Some(gate) = topics::parse_gate_presence(topic) {
        return match serde_json::from_slice::<GatePresence>(payload) {
            Ok(report) => domain.gate_presence(gate, &report).await.unwrap_or_else(|e| {
                tracing::error!(gate, error = %e, "presence report failed");
                Vec::new()
            }),
            Err(e) => {
                tracing::warn!(gate, error = %e, "malformed presence report");
                Vec::new()
            }
        };
    }
    let Some(uplink) = topics::parse_uplink(topic) else {
        tracing::warn!(topic, "uplink on a topic the bridge does not know; dropped");
        return Vec::new();
    };
    let sender = uplink.user;
    match uplink.kind {
        topics::MSG => send_message(domain, sender, payload).await,
        topics::RECEIPT => {
            let update = decode_or_refuse!(sender, payload, ReceiptUpdate);
            answer(sender, update.id.clone(), domain.record_receipt(sender, &update).await)
        }
        topics::SYNC => {
            let request = decode_or_refuse!(sender, payload, SyncRequest);
            let result = domain.sync(sender, request.after, request.limit).await.map(|mut answer| {
                answer.id = request.id.clone();
                vec![Outgoing::new(sender, topics::SYNC, &answer)]
            });
            answer(sender, request.id, result)
        }
        topics::TYPING => {
            let update = decode_or_refuse!(sender, payload, TypingUpdate);
            answer(sender, None, domain.typing(sender, &update).await)
        }
        topics::SETTINGS => {
            let update = decode_or_refuse!(sender, payload, SettingsUpdate);
            let result = match update.conversation_id {
                Some(conversation) => domain
                    .update_settings(sender, conversation, parley_domain::settings_change(&update))
                    .await
                    .map(|(_, out)| out),
                None => Err(DomainError::invalid("invalid_payload", "conversation_id is required")),
            };
            answer(sender, update.id, result)
        }
        topics::PRESENCE => {
            let update = decode_or_refuse!(sender, payload, PresenceUpdate);
            let result = domain.set_presence(sender, update.status.as_deref(), update.availability.as_deref()).await;
            answer(sender, update.id, result)
        }
        topics::EDIT => {
            let edit = decode_or_refuse!(sender, payload, EditMessage);
            answer(sender, edit.id, domain.edit_message(sender, edit.message_id, &edit.text).await)
        }
        topics::DELETE => {
            let delete = decode_or_refuse!(sender, payload, DeleteMessage);
            let result = match delete.scope.as_str() {
                "everyone" => domain.delete_message(sender, delete.message_id, true).await,
                "me" => domain.delete_message(sender, delete.message_id, false).await,
                _ => Err(DomainError::invalid("invalid_scope", "`for` is `everyone` or `me`")),
            };
            answer(sender, delete.id, result)
        }
        topics::REACT => {
            let react = decode_or_refuse!(sender, payload, React);
            let result = match react.op.as_str() {
                "add" | "remove" => domain.react(sender, react.message_id, &react.emoji, react.op == "add").await,
                _ => Err(DomainError::invalid("invalid_op", "`op` is `add` or `remove`")),
            };
            answer(sender, react.id, result)
        }
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
        Err((id, message)) => return vec![error(sender, topics::ACK, id, "invalid_payload", message)],
    };
    let client_id = msg.id.clone();
    message_answer(sender, client_id, domain.send_message(sender, msg).await)
}

/// Message uplinks (`from/{uid}/msg`, as (sender, payload)) handled together: for
/// each, in order, what [`handle_uplink`] would publish for it alone. The ones
/// that store something share one transaction. Also returns how many did.
///
/// They are checked at once and stored in `turn`, which ends before their
/// downlinks are made (see [`parley_store::Store::store_messages_in_turn`]).
pub async fn handle_messages(domain: &Domain, uplinks: &[(UserId, &[u8])], turn: Turn) -> (Vec<Vec<Outgoing>>, usize) {
    let mut out: Vec<Vec<Outgoing>> = uplinks.iter().map(|_| Vec::new()).collect();
    let mut batch = Vec::with_capacity(uplinks.len());
    let mut slots = Vec::with_capacity(uplinks.len());
    for (i, (sender, payload)) in uplinks.iter().enumerate() {
        match decode::<SendMessage>(payload) {
            Ok(msg) => {
                slots.push((i, *sender, msg.id.clone()));
                batch.push((*sender, msg));
            }
            Err((id, message)) => out[i] = vec![error(*sender, topics::ACK, id, "invalid_payload", message)],
        }
    }
    let (results, together) = domain.send_messages_in_turn(batch, turn).await;
    for ((i, sender, client_id), result) in slots.into_iter().zip(results) {
        out[i] = message_answer(sender, client_id, result);
    }
    (out, together)
}

/// The sender's acknowledgement and every member's delivery of a stored message,
/// or the refusal on the sender's ack topic.
fn message_answer(sender: UserId, client_id: String, result: Result<Stored<Posted>, DomainError>) -> Vec<Outgoing> {
    match result {
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

/// What a successful uplink causes, or its refusal on the sender's error channel.
fn answer(sender: UserId, id: Option<String>, result: Result<Vec<Outgoing>, DomainError>) -> Vec<Outgoing> {
    match result {
        Ok(out) => out,
        Err(e) => vec![refusal(sender, topics::ERROR, id, &e)],
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
    let retry_after_ms = e.retry_after().map(|wait| wait.as_millis().max(1) as u64);
    let error = ErrorBody { code: e.code().to_string(), message: e.public_message(), retry_after_ms };
    Outgoing::new(sender, channel, &AckError { id, error })
}

/// `{"id": …, "error": {"code": …, "message": …}}` on the sender's `channel`.
fn error(sender: UserId, channel: &'static str, id: Option<String>, code: &str, message: String) -> Outgoing {
    let error = ErrorBody { code: code.to_string(), message, retry_after_ms: None };
    Outgoing::new(sender, channel, &AckError { id, error })
}
