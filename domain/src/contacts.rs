//! Contacts: ask, accept, decline, remove. Each change reaches both users'
//! devices on `to/{uid}/contact` as a numbered event of their logs.

use parley_store::{ContactChange, ContactRecord, ContactState};
use parley_wire::payloads::{Event, Outgoing};
use parley_wire::{topics, UserId};

use crate::{now_ms, Domain, DomainError};

/// The body of a `contact` event: who, and where the receiver now stands with them.
#[derive(Debug, Clone, serde::Serialize)]
struct ContactEventBody {
    user_id: UserId,
    state: &'static str,
}

impl Domain {
    /// `user` asks `other` to become contacts (or accepts, if `other` already asked).
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn request_contact(
        &self,
        user: UserId,
        other: UserId,
    ) -> Result<(ContactState, Vec<Outgoing>), DomainError> {
        if user == other {
            return Err(DomainError::invalid("invalid_contact", "you cannot add yourself"));
        }
        // Devices and unknown ids are `user_not_found` alike.
        self.public_profile(other).await?;
        let change = self.store().request_contact(user, other, now_ms()).await?;
        Ok((change.state, contact_events(&change)))
    }

    /// `user` answers the request `from` made.
    #[tracing::instrument(skip_all, fields(user_id = %user))]
    pub async fn answer_contact(
        &self,
        user: UserId,
        from: UserId,
        accept: bool,
    ) -> Result<(ContactState, Vec<Outgoing>), DomainError> {
        let change =
            self.store().answer_contact(user, from, accept, now_ms()).await?.ok_or_else(|| {
                DomainError::not_found("request_not_found", "that user has no pending request to you")
            })?;
        Ok((change.state, contact_events(&change)))
    }

    /// Ends contact (or a pending request either way) between `user` and `other`.
    pub async fn remove_contact(&self, user: UserId, other: UserId) -> Result<Vec<Outgoing>, DomainError> {
        let change = self.store().remove_contact(user, other, now_ms()).await?;
        if !change.changed {
            return Err(DomainError::not_found("contact_not_found", "no contact or request with that user"));
        }
        Ok(contact_events(&change))
    }

    /// `user`'s contacts, or its pending requests both ways.
    pub async fn contacts(&self, user: UserId, requests: bool) -> Result<Vec<ContactRecord>, DomainError> {
        Ok(self.store().contacts_of(user, requests).await?)
    }

    /// Where `user` stands with `other`.
    pub async fn contact_state(&self, user: UserId, other: UserId) -> Result<ContactState, DomainError> {
        Ok(self.store().contact_state(user, other).await?)
    }
}

/// The events a change wrote, as downlinks on each receiver's `contact` channel.
fn contact_events(change: &ContactChange) -> Vec<Outgoing> {
    change
        .events
        .iter()
        .map(|e| {
            let event = Event::new(e.seq, "contact", &ContactEventBody { user_id: e.other, state: e.state.as_str() });
            Outgoing::new(e.user, topics::CONTACT, &event)
        })
        .collect()
}
