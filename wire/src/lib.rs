//! The device contract: topic names, identifiers and payloads shared by the gate,
//! the bridge, the API, the load generator and test clients.
//!
//! Every topic a device may touch starts with its own user id: `from/{uid}/…` is what
//! it sends, `to/{uid}/…` what it receives. `docs/protocol.md` is the prose version.

pub mod bus;
pub mod codec;
pub mod ids;
pub mod payloads;
pub mod rights;
pub mod topics;

pub use ids::{Availability, ConversationId, MessageId, Role, UserId};
pub use rights::{DeviceRights, Right};
