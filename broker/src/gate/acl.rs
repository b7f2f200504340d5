//! Who may publish and subscribe where. Every device topic starts with the
//! user's own id, so the check is a prefix comparison with no database lookup.

use parley_wire::{topics, DeviceRights};

/// Longest topic or filter accepted from a device, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Result of checking a topic or filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Well-formed, but not this user's.
    NotAuthorized,
    /// Not a valid topic or filter at all.
    Invalid,
}

/// A device of `user` may publish only under `from/{user}/`.
pub fn publish(user: &str, topic: &str) -> Verdict {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN || topic.contains(['+', '#', '\0']) {
        return Verdict::Invalid;
    }
    match topic.strip_prefix(&topics::uplink_prefix(user)) {
        Some(rest) if !rest.is_empty() => Verdict::Allowed,
        _ => Verdict::NotAuthorized,
    }
}

/// As [`publish`], and a kiosk device (`rights` given) only the kinds of uplink its
/// rights allow (`from/{user}/msg` needs `send`, and so on).
pub fn publish_as(user: &str, rights: Option<DeviceRights>, topic: &str) -> Verdict {
    match (publish(user, topic), rights) {
        (Verdict::Allowed, Some(rights)) => {
            // `publish` checked the topic is `from/{user}/{kind}`.
            let kind = &topic["from/".len() + user.len() + 1..];
            if rights.allows_uplink(kind) {
                Verdict::Allowed
            } else {
                Verdict::NotAuthorized
            }
        }
        (verdict, _) => verdict,
    }
}

/// A device of `user` may subscribe only under `to/{user}/`; wildcards are fine
/// after that prefix, never in it. Shared subscriptions are for the platform only.
pub fn subscribe(user: &str, filter: &str) -> Verdict {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') || !rumqttc::valid_filter(filter) {
        return Verdict::Invalid;
    }
    match filter.strip_prefix(&topics::downlink_prefix(user)) {
        Some(rest) if !rest.is_empty() => Verdict::Allowed,
        _ => Verdict::NotAuthorized,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_wire::Right;

    const ME: &str = "0193b6d0-0000-7000-8000-000000000001";
    const OTHER: &str = "0193b6d0-0000-7000-8000-000000000002";

    #[test]
    fn devices_publish_only_under_their_own_uplink_prefix() {
        assert_eq!(publish(ME, &format!("from/{ME}/msg")), Verdict::Allowed);
        for topic in [
            format!("from/{OTHER}/msg"),
            format!("to/{ME}/msg"),
            format!("from/{ME}"),
            format!("from/{ME}/"),
            format!("from/{ME}x/msg"),
            "$SYS/broker".to_string(),
            "from".to_string(),
        ] {
            assert_eq!(publish(ME, &topic), Verdict::NotAuthorized, "{topic}");
        }
        for topic in [String::new(), format!("from/{ME}/+"), format!("from/{ME}/#"), "a".repeat(300)] {
            assert_eq!(publish(ME, &topic), Verdict::Invalid, "{topic}");
        }
    }

    #[test]
    fn kiosk_devices_publish_only_what_their_rights_allow() {
        let typing_only = Some(DeviceRights::from_rights([Right::Typing]));
        assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/typing")), Verdict::Allowed);
        assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/sync")), Verdict::Allowed);
        for kind in ["msg", "edit", "react", "receipt", "presence", "settings", "whatever"] {
            assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/{kind}")), Verdict::NotAuthorized, "{kind}");
        }
        assert_eq!(publish_as(ME, None, &format!("from/{ME}/msg")), Verdict::Allowed);
        assert_eq!(publish_as(ME, typing_only, &format!("from/{OTHER}/typing")), Verdict::NotAuthorized);
        assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/+")), Verdict::Invalid);
    }

    #[test]
    fn devices_subscribe_only_under_their_own_downlink_prefix() {
        for filter in [format!("to/{ME}/#"), format!("to/{ME}/msg"), format!("to/{ME}/+")] {
            assert_eq!(subscribe(ME, &filter), Verdict::Allowed, "{filter}");
        }
        for filter in [
            "#".to_string(),
            "+/#".to_string(),
            "to/#".to_string(),
            "to/+/msg".to_string(),
            format!("to/{OTHER}/#"),
            format!("from/{ME}/#"),
            "$SYS/#".to_string(),
            format!("$share/g/to/{ME}/#"),
            format!("to/{ME}"),
        ] {
            assert_eq!(subscribe(ME, &filter), Verdict::NotAuthorized, "{filter}");
        }
        for filter in [String::new(), format!("to/{ME}/#/x"), format!("to/{ME}/a+"), "to/#x".to_string()] {
            assert_eq!(subscribe(ME, &filter), Verdict::Invalid, "{filter}");
        }
    }
}
