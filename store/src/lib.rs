//! The only code that speaks SQL. One [`Store`] with two backends, SQLite and
//! PostgreSQL, sharing the same statements wherever the dialects agree; the same
//! behaviour tests (`tests/behaviour.rs`) run against both.
//!
//! Times are stored as milliseconds since the epoch in both backends.

mod backend;
mod batch;
mod codes;
mod consultations;
mod contacts;
mod conversations;
mod devices;
mod error;
mod events;
mod identifiers;
mod institutions;
mod members;
mod messages;
mod presence;
mod reactions;
mod search;
mod tokens;
mod uploads;
mod users;

#[cfg(feature = "testing")]
pub mod testing;

pub use backend::Store;
pub use batch::{Batched, Turn, TurnEnd};
pub use codes::{Attempt, Issue, NewCode, SendLimits};
pub use consultations::{
    ConsultationChange, ConsultationCursor, ConsultationRecord, ConsultationStanding, ConsultationStatus,
    NewConsultation,
};
pub use contacts::{ContactChange, ContactEvent, ContactRecord, ContactState};
pub use conversations::{
    ConversationCursor, ConversationFilter, ConversationRecord, ConversationSummary, ListView, NewGroup,
};
pub use devices::{DeviceRecord, DeviceRenewal, NewDevice};
pub use error::StoreError;
pub use events::{EventPage, EventRecord};
pub use identifiers::{Identifier, IdentifierChange, Released};
pub use institutions::{InstitutionMember, MemberChange};
pub use members::{MemberRecord, MemberSettings, SettingsChange};
pub use messages::{hide, MessagePage, MessageRange, NewMessage, Posted, Stored, Target};
pub use presence::PresenceRecord;
pub use reactions::{Change, EditRecord};
pub use search::{SearchCursor, SearchHit};
pub use tokens::{NewSession, Rotation, SessionRecord};
pub use uploads::UploadRecord;
pub use users::{IdentifierKind, NewUser, Profile, ProfileChange, UserQuery, UserRecord};

/// Milliseconds since the epoch → UTC time (out-of-range values clamp to the epoch).
pub(crate) fn time_from_ms(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
