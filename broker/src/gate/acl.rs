//! Who may publish and subscribe where. Every device topic starts with the
//! user's own id, so the check is a prefix comparison with no database lookup.

use parley_wire::{topics, DeviceRights};

/// How long and how deep a topic or filter from a device may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// In bytes.
    pub max_len: usize,
    /// In levels: `a/b/c` has 3.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self { max_len: 256, max_levels: 16 }
    }
}

impl TopicLimits {
    fn fits(&self, topic: &str) -> bool {
        !topic.is_empty()
            && topic.len() <= self.max_len
            && topic.bytes().filter(|&b| b == b'/').count() < self.max_levels
            && !topic.contains('\0')
    }
}

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
pub fn publish(user: &str, topic: &str, limits: &TopicLimits) -> Verdict {
    if !limits.fits(topic) || topic.contains(['+', '#']) {
        return Verdict::Invalid;
    }
    match topic.strip_prefix(&topics::uplink_prefix(user)) {
        Some(rest) if !rest.is_empty() => Verdict::Allowed,
        _ => Verdict::NotAuthorized,
    }
}

/// As [`publish`], and a kiosk device (`rights` given) only the kinds of uplink its
/// rights allow (`from/{user}/msg` needs `send`, and so on).
pub fn publish_as(user: &str, rights: Option<DeviceRights>, topic: &str, limits: &TopicLimits) -> Verdict {
    match (publish(user, topic, limits), rights) {
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
pub fn subscribe(user: &str, filter: &str, limits: &TopicLimits) -> Verdict {
    if !limits.fits(filter) || !rumqttc::valid_filter(filter) {
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
    const L: TopicLimits = TopicLimits { max_len: 256, max_levels: 16 };

    #[test]
    fn devices_publish_only_under_their_own_uplink_prefix() {
        assert_eq!(publish(ME, &format!("from/{ME}/msg"), &L), Verdict::Allowed);
        for topic in [
            format!("from/{OTHER}/msg"),
            format!("to/{ME}/msg"),
            format!("from/{ME}"),
            format!("from/{ME}/"),
            format!("from/{ME}x/msg"),
            "$SYS/broker".to_string(),
            "from".to_string(),
        ] {
            assert_eq!(publish(ME, &topic, &L), Verdict::NotAuthorized, "{topic}");
        }
        for topic in [String::new(), format!("from/{ME}/+"), format!("from/{ME}/#"), "a".repeat(300)] {
            assert_eq!(publish(ME, &topic, &L), Verdict::Invalid, "{topic}");
        }
    }

    #[test]
    fn topics_and_filters_over_the_length_or_depth_limit_are_invalid() {
        let tight = TopicLimits { max_len: 60, max_levels: 4 };
        assert_eq!(publish(ME, &format!("from/{ME}/a/b"), &tight), Verdict::Allowed);
        assert_eq!(publish(ME, &format!("from/{ME}/a/b/c"), &tight), Verdict::Invalid);
        assert_eq!(publish(ME, &format!("from/{ME}/{}", "x".repeat(20)), &tight), Verdict::Invalid);
        assert_eq!(subscribe(ME, &format!("to/{ME}/+/#"), &tight), Verdict::Allowed);
        assert_eq!(subscribe(ME, &format!("to/{ME}/+/+/#"), &tight), Verdict::Invalid);
        assert_eq!(subscribe(ME, &"/".repeat(10), &tight), Verdict::Invalid);
        // Wildcards and `$` in odd places.
        for topic in
            [format!("from/{ME}/a+"), format!("from/{ME}/#/x"), "from/+/msg".to_string(), format!("from/{ME}/\0")]
        {
            assert_eq!(publish(ME, &topic, &L), Verdict::Invalid, "{topic}");
        }
        assert_eq!(publish(ME, &format!("$from/{ME}/msg"), &L), Verdict::NotAuthorized);
        assert_eq!(subscribe(ME, &format!("+/{ME}/#"), &L), Verdict::NotAuthorized);
        assert_eq!(subscribe(ME, &format!("to/{ME}/$x"), &L), Verdict::Allowed);
        assert_eq!(subscribe(ME, "#/to", &L), Verdict::Invalid);
    }

    #[test]
    fn kiosk_devices_publish_only_what_their_rights_allow() {
        let typing_only = Some(DeviceRights::from_rights([Right::Typing]));
        assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/typing"), &L), Verdict::Allowed);
        assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/sync"), &L), Verdict::Allowed);
        for kind in ["msg", "edit", "react", "receipt", "presence", "settings", "whatever"] {
            assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/{kind}"), &L), Verdict::NotAuthorized, "{kind}");
        }
        assert_eq!(publish_as(ME, None, &format!("from/{ME}/msg"), &L), Verdict::Allowed);
        assert_eq!(publish_as(ME, typing_only, &format!("from/{OTHER}/typing"), &L), Verdict::NotAuthorized);
        assert_eq!(publish_as(ME, typing_only, &format!("from/{ME}/+"), &L), Verdict::Invalid);
    }

    #[test]
    fn devices_subscribe_only_under_their_own_downlink_prefix() {
        for filter in [format!("to/{ME}/#"), format!("to/{ME}/msg"), format!("to/{ME}/+")] {
            assert_eq!(subscribe(ME, &filter, &L), Verdict::Allowed, "{filter}");
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
            assert_eq!(subscribe(ME, &filter, &L), Verdict::NotAuthorized, "{filter}");
        }
        for filter in [String::new(), format!("to/{ME}/#/x"), format!("to/{ME}/a+"), "to/#x".to_string()] {
            assert_eq!(subscribe(ME, &filter, &L), Verdict::Invalid, "{filter}");
        }
    }
}
