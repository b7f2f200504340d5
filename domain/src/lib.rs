//! The rules of Parley, shared by the gate, the bridge and the API: accounts and
//! tokens, who may send what to whom, how history is read. Adapters call
//! [`Domain`]; the domain calls the store; nothing here knows MQTT or HTTP.

mod accounts;
mod codes;
mod consultations;
mod contacts;
mod conversations;
mod delivery;
mod devices;
mod edits;
mod error;
mod identifiers;
mod institutions;
mod keys;
mod messaging;
mod policy;
mod presence;
mod profiles;
mod ratelimit;
mod receipts;
mod search;
mod sessions;
mod settings;
mod sync;
mod tokens;
mod typing;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

pub use accounts::{ClientInfo, Registered, Registration};
pub use codes::constant_time_eq;
pub use conversations::{ConversationDetails, NewConversation, MAX_GROUP_MEMBERS};
pub use delivery::{Delivery, DeliveryConfig, DeliveryError};
pub use devices::{DeviceRequest, DeviceSecret, DeviceToken};
pub use error::{DomainError, ErrorKind};
pub use institutions::NewInstitution;
pub use keys::load_or_create_signing_key;
pub use messaging::{message_outgoing, HistoryQuery, MAX_CLIENT_ID_LEN};
pub use parley_store::UserRecord as StoreUser;
pub use parley_store::{ConsultationCursor, ConsultationRecord, ConsultationStatus};
pub use parley_store::{ContactRecord, ContactState, Profile, ProfileChange, SessionRecord, UserQuery};
pub use parley_store::{
    ConversationCursor, ConversationFilter, ConversationRecord, ConversationSummary, ListView, MemberRecord,
    MemberSettings, MessagePage, Posted, SettingsChange, Store, StoreError, Stored,
};
pub use parley_store::{DeviceRecord, IdentifierKind, InstitutionMember, Released};
pub use parley_store::{EditRecord, SearchCursor, SearchHit};
pub use policy::ContactPolicy;
pub use profiles::{set_role_by_login, MAX_SEARCH_PAGE};
pub use receipts::MessageReceipts;
pub use sessions::{Revoked, Session, SessionsRevoked};
pub use settings::settings_change;
pub use sync::MAX_SYNC_GAP;
pub use tokens::{AccessClaims, Actor, Grant, TokenError, TokenSettings, Tokens};

pub use ratelimit::Rate;

/// Limits the rules enforce, from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_text_chars: usize,
    /// Messages per user.
    pub user_rate: Rate,
    /// Messages per conversation.
    pub conversation_rate: Rate,
    /// Where uploaded files are kept, and the largest accepted.
    pub uploads_dir: std::path::PathBuf,
    pub max_upload_bytes: usize,
    /// Who may reach whom (`messages.contact_policy`).
    pub contact_policy: policy::ContactPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 4000,
            user_rate: Rate { per_sec: 20, burst: 200 },
            conversation_rate: Rate { per_sec: 50, burst: 500 },
            uploads_dir: std::path::PathBuf::from("parley-data/uploads"),
            max_upload_bytes: 25 * 1024 * 1024,
            contact_policy: policy::ContactPolicy::Open,
        }
    }
}

/// The rules of accounts and sign-ins, from the `[auth]` settings.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    pub session_lifetime: Duration,
    pub reuse_grace: Duration,
    pub code_ttl: Duration,
    pub code_max_attempts: u32,
    pub code_resend_interval: Duration,
    pub codes_per_identifier_per_hour: u32,
    pub codes_per_address_per_hour: u32,
    pub login_failures_per_account: u32,
    pub login_failures_per_address: u32,
    pub login_window: Duration,
    pub device_secret_lifetime: Duration,
    pub unverified_release: Duration,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        Self {
            session_lifetime: Duration::from_secs(90 * 24 * 3600),
            reuse_grace: Duration::from_secs(30),
            code_ttl: Duration::from_secs(600),
            code_max_attempts: 5,
            code_resend_interval: Duration::from_secs(60),
            codes_per_identifier_per_hour: 5,
            codes_per_address_per_hour: 20,
            login_failures_per_account: 10,
            login_failures_per_address: 50,
            login_window: Duration::from_secs(900),
            device_secret_lifetime: Duration::from_secs(365 * 24 * 3600),
            unverified_release: Duration::from_secs(2 * 24 * 3600),
        }
    }
}

/// Accounts: the policy and where one-time codes go.
#[derive(Clone, Default)]
pub struct Auth {
    pub policy: AuthPolicy,
    pub delivery: Delivery,
}

/// The domain services. Cheap to clone; every part of the process shares one.
#[derive(Clone)]
pub struct Domain {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    tokens: Tokens,
    limits: Limits,
    auth: Auth,
    typing: typing::TypingThrottle,
    sending: ratelimit::SendLimits,
}

impl Domain {
    pub fn new(store: Store, tokens: Tokens, limits: Limits, auth: Auth) -> Self {
        let sending = ratelimit::SendLimits::new(limits.user_rate, limits.conversation_rate);
        Self { inner: Arc::new(Inner { store, tokens, limits, auth, typing: Default::default(), sending }) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub(crate) fn delivery(&self) -> &Delivery {
        &self.inner.auth.delivery
    }

    pub(crate) fn send_limits(&self) -> &ratelimit::SendLimits {
        &self.inner.sending
    }

    pub(crate) fn typing_throttle(&self) -> &typing::TypingThrottle {
        &self.inner.typing
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
