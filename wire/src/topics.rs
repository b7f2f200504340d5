//! Topic names. The gate's ACL and the bridge's routing both read them from here.

use crate::UserId;

/// Prefix of everything user `uid` may publish.
pub fn uplink_prefix(uid: &str) -> String {
    format!("from/{uid}/")
}

/// Prefix of everything user `uid` may subscribe to.
pub fn downlink_prefix(uid: &str) -> String {
    format!("to/{uid}/")
}

/// Where a device sends chat messages.
pub fn send_message(uid: UserId) -> String {
    format!("from/{uid}/msg")
}

/// Where a device receives acknowledgements and errors for what it sent.
pub fn ack(uid: UserId) -> String {
    channel(uid, ACK)
}

/// Where a device receives messages sent to it.
pub fn message(uid: UserId) -> String {
    channel(uid, MSG)
}

/// `to/{uid}/{channel}`.
pub fn channel(uid: UserId, channel: &str) -> String {
    format!("to/{uid}/{channel}")
}

/// Downlink channels (`to/{uid}/…`) and uplink kinds (`from/{uid}/…`).
pub const MSG: &str = "msg";
pub const ACK: &str = "ack";
pub const RECEIPT: &str = "receipt";
pub const SYNC: &str = "sync";
pub const UNREAD: &str = "unread";
pub const ERROR: &str = "error";
pub const EDIT: &str = "edit";
pub const DELETE: &str = "delete";
pub const REACT: &str = "react";
pub const TYPING: &str = "typing";
pub const PRESENCE: &str = "presence";
pub const SETTINGS: &str = "settings";
pub const CONTACT: &str = "contact";
pub const CONSULTATION: &str = "consultation";
/// Sign-in changes for the gates: revoked sessions whose devices must go. Never
/// delivered to devices (the gate consumes it).
pub const SESSION: &str = "session";

/// The filter with which the bridges share all uplinks.
pub const BRIDGE_UPLINK_FILTER: &str = "$share/parley-bridge/from/#";

/// The filter with which the bridges share the gates' presence reports.
pub const BRIDGE_PRESENCE_FILTER: &str = "$share/parley-presence/sys/presence/+";

/// Where the gates report device counts: `sys/presence/{gate}`.
const GATE_PRESENCE_PREFIX: &str = "sys/presence/";

/// Where gate `gate` reports device counts (one topic, so reports stay in order).
pub fn gate_presence(gate: &str) -> String {
    format!("{GATE_PRESENCE_PREFIX}{gate}")
}

/// The gate named in a presence report's topic; `None` for any other topic.
pub fn parse_gate_presence(topic: &str) -> Option<&str> {
    topic.strip_prefix(GATE_PRESENCE_PREFIX)
}

/// Whether the bridges take `topic` (through [`BRIDGE_UPLINK_FILTER`] or
/// [`BRIDGE_PRESENCE_FILTER`]): an uplink or a gate's presence report.
pub fn bridge_takes(topic: &str) -> bool {
    topic.starts_with("from/") || topic.starts_with(GATE_PRESENCE_PREFIX)
}

/// The filter with which a gate takes every downlink from the embedded bus.
pub const GATE_DOWNLINK_FILTER: &str = "to/#";

/// The filter with which a gate on an external bus takes the downlinks of user `uid`
/// while that user has a session on it.
pub fn user_downlink_filter(uid: UserId) -> String {
    format!("to/{uid}/#")
}

/// An uplink topic split into its sender and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink<'a> {
    pub user: UserId,
    pub kind: &'a str,
}

/// `from/{uid}/{kind}` → sender and kind; `None` for anything else.
pub fn parse_uplink(topic: &str) -> Option<Uplink<'_>> {
    let rest = topic.strip_prefix("from/")?;
    let (uid, kind) = rest.split_once('/')?;
    Some(Uplink { user: uid.parse().ok()?, kind })
}

/// The user a downlink topic `to/{uid}/…` is addressed to, as it is written in the topic.
pub fn downlink_user(topic: &str) -> Option<&str> {
    downlink_parts(topic).map(|(uid, _)| uid)
}

/// `to/{uid}/{channel…}` → (uid, channel…), as written in the topic.
pub fn downlink_parts(topic: &str) -> Option<(&str, &str)> {
    topic.strip_prefix("to/")?.split_once('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_topics_parse_into_sender_and_kind() {
        let uid = UserId::new();
        let topic = send_message(uid);
        assert_eq!(parse_uplink(&topic), Some(Uplink { user: uid, kind: "msg" }));
        assert_eq!(parse_uplink("from/not-a-uuid/msg"), None);
        assert_eq!(parse_uplink("to/x/msg"), None);
        assert_eq!(parse_uplink(&format!("from/{uid}")), None);
    }

    #[test]
    fn the_bridges_take_uplinks_and_presence_reports_only() {
        let uid = UserId::new();
        assert_eq!(parse_gate_presence(&gate_presence("gate-a")), Some("gate-a"));
        assert_eq!(parse_gate_presence("sys/other/gate-a"), None);
        for taken in [send_message(uid), gate_presence("g"), "from/_batch".into()] {
            assert!(bridge_takes(&taken), "{taken}");
        }
        for not in [message(uid), "ns/lab/x".into(), "sys/other".into(), "lab/from/x".into()] {
            assert!(!bridge_takes(&not), "{not}");
        }
    }

    #[test]
    fn downlink_topics_name_their_user() {
        let uid = UserId::new();
        assert_eq!(downlink_user(&message(uid)), Some(uid.to_string().as_str()));
        assert_eq!(downlink_user("to/abc"), None);
        assert_eq!(downlink_user("from/abc/msg"), None);
    }
}
