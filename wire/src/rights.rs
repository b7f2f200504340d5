//! What a kiosk device may do. Every device may read what is sent to it and sync;
//! beyond that it has only the rights it was provisioned with. They travel in its
//! access tokens as the scope `device <right> <right>…`, so the gate checks each
//! publish without a database lookup.

use std::fmt;
use std::str::FromStr;

use crate::ids::UnknownValue;
use crate::topics;

/// One thing a device may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// Send messages, and edit, delete or react to them.
    Send,
    /// Report messages delivered and read.
    Receipts,
    /// Typing signals.
    Typing,
    /// Away/online (and availability) signals.
    Presence,
    /// Its own per-conversation settings (mute, pin…).
    Settings,
}

impl Right {
    pub const ALL: [Right; 5] = [Right::Send, Right::Receipts, Right::Typing, Right::Presence, Right::Settings];

    pub fn as_str(self) -> &'static str {
        match self {
            Right::Send => "send",
            Right::Receipts => "receipts",
            Right::Typing => "typing",
            Right::Presence => "presence",
            Right::Settings => "settings",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl FromStr for Right {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Right::ALL.into_iter().find(|r| r.as_str() == s).ok_or(UnknownValue)
    }
}

/// A set of [`Right`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceRights(u8);

/// The first word of a device token's scope.
pub const DEVICE_SCOPE: &str = "device";

impl DeviceRights {
    /// What a kiosk gets unless told otherwise: chat, receipts and typing.
    pub const KIOSK: DeviceRights = DeviceRights(1 | 2 | 4);

    pub fn from_rights(rights: impl IntoIterator<Item = Right>) -> Self {
        DeviceRights(rights.into_iter().fold(0, |acc, r| acc | r.bit()))
    }

    pub fn allows(self, right: Right) -> bool {
        self.0 & right.bit() != 0
    }

    pub fn rights(self) -> impl Iterator<Item = Right> {
        Right::ALL.into_iter().filter(move |r| self.allows(*r))
    }

    /// Whether a device with these rights may publish an uplink of `kind` (`from/{uid}/{kind}`).
    pub fn allows_uplink(self, kind: &str) -> bool {
        let needed = match kind {
            topics::SYNC => return true,
            topics::MSG | topics::EDIT | topics::DELETE | topics::REACT => Right::Send,
            topics::RECEIPT => Right::Receipts,
            topics::TYPING => Right::Typing,
            topics::PRESENCE => Right::Presence,
            topics::SETTINGS => Right::Settings,
            _ => return false,
        };
        self.allows(needed)
    }

    /// The token scope: `device` followed by the rights.
    pub fn scope(self) -> String {
        std::iter::once(DEVICE_SCOPE).chain(self.rights().map(Right::as_str)).collect::<Vec<_>>().join(" ")
    }

    /// Reads a token scope; `None` for anything but a well-formed device scope.
    pub fn from_scope(scope: &str) -> Option<Self> {
        let mut words = scope.split(' ');
        if words.next() != Some(DEVICE_SCOPE) {
            return None;
        }
        words.map(|w| w.parse().ok()).collect::<Option<Vec<Right>>>().map(DeviceRights::from_rights)
    }
}

impl fmt::Display for DeviceRights {
    /// Space-separated right names (how the store keeps them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rights().map(Right::as_str).collect::<Vec<_>>().join(" "))
    }
}

impl FromStr for DeviceRights {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split_whitespace().map(str::parse).collect::<Result<Vec<Right>, _>>().map(DeviceRights::from_rights)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_round_trip_and_refuse_strangers() {
        let rights = DeviceRights::from_rights([Right::Send, Right::Typing]);
        assert_eq!(rights.scope(), "device send typing");
        assert_eq!(DeviceRights::from_scope(&rights.scope()), Some(rights));
        assert_eq!(DeviceRights::from_scope("device"), Some(DeviceRights::default()));
        assert_eq!(DeviceRights::from_scope("device send admin"), None);
        assert_eq!(DeviceRights::from_scope("admin send"), None);
        assert_eq!("receipts  send".parse(), Ok(DeviceRights::from_rights([Right::Receipts, Right::Send])));
        assert_eq!(rights.to_string(), "send typing");
    }

    #[test]
    fn uplinks_need_the_matching_right() {
        let kiosk = DeviceRights::KIOSK;
        assert_eq!(kiosk.rights().collect::<Vec<_>>(), vec![Right::Send, Right::Receipts, Right::Typing]);
        for kind in ["msg", "edit", "delete", "react", "receipt", "typing", "sync"] {
            assert!(kiosk.allows_uplink(kind), "{kind}");
        }
        for kind in ["presence", "settings", "unknown", ""] {
            assert!(!kiosk.allows_uplink(kind), "{kind}");
        }
        let reader = DeviceRights::default();
        assert!(reader.allows_uplink("sync"));
        assert!(!reader.allows_uplink("msg") && !reader.allows_uplink("receipt"));
    }
}
