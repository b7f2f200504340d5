//! Identifier types: parsed once at the edge, trusted inside.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Uuid))]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered identifier.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::try_parse(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A user account. Appears in every device topic.
    UserId
);
id_type!(
    /// A conversation (1:1 for now).
    ConversationId
);
id_type!(
    /// A stored message, assigned by the server.
    MessageId
);

/// What an account is. Chosen at creation (or by an admin), never by a profile update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Someone using the service.
    User,
    /// A professional users consult (doctor, midwife, astrologer…), with a specialty.
    Provider,
    /// An organisation; its member accounts act for it.
    Institution,
    /// Runs the platform.
    Admin,
    /// A kiosk or other unattended device, provisioned by an institution or admin.
    Device,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Provider => "provider",
            Role::Institution => "institution",
            Role::Admin => "admin",
            Role::Device => "device",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "user" => Role::User,
            "provider" => Role::Provider,
            "institution" => Role::Institution,
            "admin" => Role::Admin,
            "device" => Role::Device,
            _ => return Err(UnknownValue),
        })
    }
}

/// Whether a provider takes new conversations now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Availability {
    Available,
    Busy,
    Unavailable,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Available => "available",
            Availability::Busy => "busy",
            Availability::Unavailable => "unavailable",
        }
    }
}

impl FromStr for Availability {
    type Err = UnknownValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "available" => Availability::Available,
            "busy" => Availability::Busy,
            "unavailable" => Availability::Unavailable,
            _ => return Err(UnknownValue),
        })
    }
}

/// A stored or given name that is not one of the enum's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownValue;

impl fmt::Display for UnknownValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown value")
    }
}

impl std::error::Error for UnknownValue {}
