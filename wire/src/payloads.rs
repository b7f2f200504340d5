//! JSON payloads carried on the topics. Field names are the contract: never rename one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Availability, ConversationId, MessageId, UserId};

/// `from/{uid}/msg`: a device sends a message, either to a user (`to`, the 1:1
/// conversation) or into a conversation it belongs to (`conversation_id`). `id` is
/// chosen by the device and makes retries harmless: the same `id` from the same
/// user is stored once. Unknown fields are ignored, so newer apps keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SendMessage {
    pub id: String,
    #[serde(default)]
    pub to: Option<UserId>,
    #[serde(default)]
    pub conversation_id: Option<ConversationId>,
    /// Required for `text`; an optional caption for the media kinds.
    #[serde(default)]
    pub text: String,
    /// A message of the same conversation this one answers.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// `text` (default), `image`, `audio`, `video` or `file`.
    #[serde(default)]
    pub kind: Option<String>,
    /// For the media kinds: an upload of the sender's (`POST /v1/uploads`).
    #[serde(default)]
    pub attachment_id: Option<uuid::Uuid>,
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
    /// Number of the message's event in the sender's own log (see sync).
    pub event_seq: i64,
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
    /// With `rate_limited`: milliseconds to wait before sending again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
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
    /// Empty once the message is deleted.
    pub text: String,
    pub sent_at: DateTime<Utc>,
    /// The message this one answers, in the same conversation.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// When the text was last changed by its sender.
    #[serde(default)]
    pub edited_at: Option<DateTime<Utc>>,
    /// Deleted for everyone by its sender, or for the reader alone: a tombstone
    /// that keeps its place (`seq`) in the conversation.
    #[serde(default)]
    pub deleted: bool,
    /// For `image`, `audio`, `video` and `file` messages: the uploaded file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// Emoji → how many members reacted with it (history and sync; absent when none).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reactions: std::collections::BTreeMap<String, i64>,
}

impl Message {
    /// The acknowledgement the sender gets for this message.
    pub fn ack(&self, event_seq: i64) -> Ack {
        Ack {
            id: self.client_id.clone(),
            message_id: self.id,
            conversation_id: self.conversation_id,
            seq: self.seq,
            sent_at: self.sent_at,
            event_seq,
        }
    }
}

/// One event of a user's log, as devices receive it live (on `to/{uid}/msg`,
/// `to/{uid}/receipt`, …) and in sync answers: `event_seq` numbers the user's
/// events from 1 without gaps, `type` says what it is, the rest is its data
/// (for `message`, the [`Message`] fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// An event whose data is `data` serialised (an object).
    pub fn new(event_seq: i64, kind: &str, data: &impl Serialize) -> Event {
        let data = match serde_json::to_value(data) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        Event { event_seq, kind: kind.to_string(), data }
    }
}

/// An event as it leaves live, its data serialised straight from `data` (which
/// must serialise as an object): the same JSON as [`Event::new`], without
/// building a JSON value (a map of strings and values) first. For the message
/// path, where every member's copy of every message is one.
#[derive(Serialize)]
pub struct LiveEvent<'a, T: Serialize> {
    pub event_seq: i64,
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(flatten)]
    pub data: &'a T,
}

/// `from/{uid}/receipt`: the device reports messages of a conversation delivered
/// to it and/or read, up to a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiptUpdate {
    /// Echoed in errors, if given.
    #[serde(default)]
    pub id: Option<String>,
    pub conversation_id: ConversationId,
    #[serde(default)]
    pub delivered_seq: Option<i64>,
    #[serde(default)]
    pub read_seq: Option<i64>,
}

/// A member's receipt watermarks changed (event `receipt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

/// `to/{uid}/unread`: the user's unread counts after a change of its own read state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Unread {
    pub conversation_id: ConversationId,
    pub unread: i64,
    pub total: i64,
}

/// `from/{uid}/sync`: "send me my events after `after`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Echoed in the answer, so a device can tell its answer from another device's.
    #[serde(default)]
    pub id: Option<String>,
    pub after: i64,
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `to/{uid}/sync` (and `GET /v1/sync`): the events after `after`, in order.
/// With `reset`, the gap cannot be replayed (too large, or pruned): the device
/// resynchronises from `GET /v1/conversations` and the latest pages, then syncs
/// from `last_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncAnswer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub events: Vec<Event>,
    /// The user's newest event number.
    pub last_seq: i64,
    /// More events follow the last one returned: ask again after it.
    pub has_more: bool,
    pub reset: bool,
}

/// A payload for one user's downlink channel (`to/{uid}/{channel}`), made by the
/// domain and published by whichever part acted (bridge or HTTP API).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub user: UserId,
    pub channel: &'static str,
    /// The JSON bytes published, serialized once when made.
    pub body: bytes::Bytes,
    /// 1 for anything a device must get; 0 for ephemeral signals (typing, presence).
    pub qos: u8,
}

impl Outgoing {
    pub fn new(user: UserId, channel: &'static str, body: &impl Serialize) -> Outgoing {
        let body = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec()).into();
        Outgoing { user, channel, body, qos: 1 }
    }

    /// At QoS 0: never queued for an absent device, never stored.
    pub fn ephemeral(user: UserId, channel: &'static str, body: &impl Serialize) -> Outgoing {
        Outgoing { qos: 0, ..Outgoing::new(user, channel, body) }
    }

    /// The MQTT QoS to publish with.
    pub fn mqtt_qos(&self) -> rumqttc::QoS {
        if self.qos == 0 {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        }
    }

    /// The topic it is published on.
    pub fn topic(&self) -> String {
        crate::topics::channel(self.user, self.channel)
    }

    /// The JSON bytes published.
    pub fn payload(&self) -> bytes::Bytes {
        self.body.clone()
    }
}

/// `from/{uid}/edit`: the sender changes a message's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditMessage {
    #[serde(default)]
    pub id: Option<String>,
    pub message_id: MessageId,
    pub text: String,
}

/// `from/{uid}/delete`: delete a message for everyone (its sender only) or for oneself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteMessage {
    #[serde(default)]
    pub id: Option<String>,
    pub message_id: MessageId,
    /// `everyone` or `me`.
    #[serde(rename = "for")]
    pub scope: String,
}

/// `from/{uid}/react`: add or remove one emoji reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct React {
    #[serde(default)]
    pub id: Option<String>,
    pub message_id: MessageId,
    pub emoji: String,
    /// `add` (default) or `remove`.
    #[serde(default = "default_op")]
    pub op: String,
}

fn default_op() -> String {
    "add".into()
}

/// `from/{uid}/typing` (QoS 0): the user starts or stops typing in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingUpdate {
    pub conversation_id: ConversationId,
    /// `start` or `stop`.
    pub state: String,
}

/// `to/{uid}/typing` (QoS 0, never stored): another member is typing. A `start`
/// lapses by itself after `expires_in` seconds unless renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub state: String,
    pub expires_in: u64,
}

/// `from/{uid}/presence`: the app says the user stepped away or is back, and/or (providers
/// and institutions) whether it takes new conversations. At least one field is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceUpdate {
    /// Echoed in errors, if given.
    #[serde(default)]
    pub id: Option<String>,
    /// `away` or `online`.
    #[serde(default)]
    pub status: Option<String>,
    /// `available`, `busy` or `unavailable` (provider and institution accounts only).
    #[serde(default)]
    pub availability: Option<String>,
}

/// `to/{uid}/presence` (QoS 0) and the HTTP presence of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Presence {
    pub user_id: UserId,
    /// `online`, `away` or `offline`.
    pub status: String,
    /// When the last device went away (absent while online or never seen).
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Providers and institutions that set one: whether they take new conversations.
    /// Absent for everyone else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<Availability>,
}

/// A consultation between a user and a provider (or institution), as the HTTP API
/// answers it and as the `consultation` event (`to/{uid}/consultation`) carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Consultation {
    pub id: uuid::Uuid,
    /// The user who asked for it.
    pub user_id: UserId,
    /// The provider or institution consulted.
    pub provider_id: UserId,
    /// `requested`, `open` or `closed`.
    pub status: String,
    /// What the user wrote when asking.
    pub note: Option<String>,
    /// The two parties' 1:1 conversation (context `consultation`), once it opened.
    pub conversation_id: Option<ConversationId>,
    pub created_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// What a gate tells the bridges on `sys/presence/{gate}`: how many devices of a
/// user it holds now, or (with `reset`) that it (re)started holding none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatePresence {
    #[serde(default)]
    pub reset: bool,
    #[serde(default)]
    pub user_id: Option<UserId>,
    #[serde(default)]
    pub devices: i64,
    /// Increases with every report of one gate (milliseconds since the epoch, made
    /// strictly increasing): several bridges share the reports and may apply them out
    /// of order, so an older report never overwrites a newer one. 0 from older gates.
    #[serde(default)]
    pub seq: i64,
}

/// `from/{uid}/settings` and `PATCH /v1/conversations/{id}/settings`: change some
/// of the member's own settings. Absent fields stay as they are; `null` clears
/// `muted_until` and `ringtone`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SettingsUpdate {
    /// Echoed in errors (MQTT).
    #[serde(default)]
    pub id: Option<String>,
    /// Required over MQTT; the path names it over HTTP.
    #[serde(default)]
    pub conversation_id: Option<ConversationId>,
    #[serde(default)]
    pub pinned: Option<bool>,
    #[serde(default)]
    pub archived: Option<bool>,
    #[serde(default)]
    pub favourite: Option<bool>,
    /// Muted until this time; `null` unmutes.
    #[serde(default, deserialize_with = "present")]
    pub muted_until: Option<Option<DateTime<Utc>>>,
    /// A ringtone name for this conversation; `null` for the default.
    #[serde(default, deserialize_with = "present")]
    pub ringtone: Option<Option<String>>,
    /// 1:1 only: block (or unblock) the other member.
    #[serde(default)]
    pub blocked: Option<bool>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// An uploaded file as messages carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    /// Download it at `GET /v1/uploads/{id}`.
    pub id: uuid::Uuid,
    pub content_type: String,
    pub size: i64,
    pub filename: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_event_is_the_event_a_sync_gives() {
        let message = Message {
            id: MessageId(uuid::Uuid::from_u128(1)),
            conversation_id: ConversationId(uuid::Uuid::from_u128(2)),
            seq: 7,
            sender_id: UserId(uuid::Uuid::from_u128(3)),
            client_id: "c-\"1\"".into(),
            kind: "text".into(),
            text: "héllo \n there".into(),
            sent_at: DateTime::from_timestamp_millis(1_700_000_000_123).expect("time"),
            reply_to: Some(MessageId(uuid::Uuid::from_u128(4))),
            edited_at: None,
            deleted: false,
            attachment: None,
            reactions: [("👍".to_string(), 2)].into(),
        };
        let live: serde_json::Value =
            serde_json::to_value(LiveEvent { event_seq: 42, kind: "message", data: &message }).expect("json");
        let event = serde_json::to_value(Event::new(42, "message", &message)).expect("json");
        assert_eq!(live, event);
        assert_eq!(live["type"], "message");
        assert_eq!(live["seq"], 7);
        let back: Event = serde_json::from_value(live).expect("an event");
        assert_eq!(
            serde_json::from_value::<Message>(serde_json::Value::Object(back.data)).expect("its message"),
            message
        );
    }
}
