//! Consultations: a user asks a provider (or an institution) for one, the provider
//! (or an admin) accepts it and it opens, either party or an admin closes it. Each
//! change reaches both parties' devices on `to/{uid}/consultation` as a numbered
//! event of their logs. Under the `consulted` contact policy they decide who may
//! message whom.

use parley_store::{ConsultationChange, ConsultationCursor, ConsultationRecord, ConsultationStatus, NewConsultation};
use parley_store::{StoreError, UserRecord};
use parley_wire::payloads::{Consultation, Event, Outgoing};
use parley_wire::{topics, Role, UserId};

use crate::policy::is_professional;
use crate::{now_ms, Domain, DomainError};

/// Longest note a request may carry, in characters.
pub const MAX_NOTE_CHARS: usize = 1000;
/// Page size when the caller gives none, and the most one page may hold.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

impl Domain {
    /// `caller` (a user account) asks `provider` (a provider or institution) for a
    /// consultation. At most one requested or open consultation per pair.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn request_consultation(
        &self,
        caller: UserId,
        provider: UserId,
        note: Option<String>,
    ) -> Result<(ConsultationRecord, Vec<Outgoing>), DomainError> {
        if self.user(caller).await?.role != Role::User {
            return Err(DomainError::forbidden("users_only", "only user accounts request consultations"));
        }
        let target = self.public_profile(provider).await?;
        if !is_professional(target.role) {
            return Err(DomainError::invalid(
                "not_a_provider",
                "consultations are requested from provider or institution accounts",
            ));
        }
        let note = match note.map(|n| n.trim().to_string()) {
            Some(n) if n.chars().count() > MAX_NOTE_CHARS => {
                return Err(DomainError::invalid(
                    "invalid_note",
                    format!("note is at most {MAX_NOTE_CHARS} characters"),
                ))
            }
            Some(n) if n.is_empty() => None,
            other => other,
        };
        let new = NewConsultation { id: uuid::Uuid::now_v7(), user: caller, provider, note, now_ms: now_ms() };
        let change = match self.store().request_consultation(&new).await {
            Ok(change) => change,
            Err(StoreError::Conflict(_)) => {
                return Err(DomainError::conflict(
                    "consultation_exists",
                    "you already have a requested or open consultation with this provider",
                ))
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(consultation_id = %new.id, provider_id = %provider, "consultation requested");
        Ok((change.consultation.clone(), consultation_events(&change)))
    }

    /// The consulted provider (or an admin) accepts a requested consultation: it opens.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn accept_consultation(
        &self,
        caller: UserId,
        id: uuid::Uuid,
    ) -> Result<(ConsultationRecord, Vec<Outgoing>), DomainError> {
        let (actor, consultation) = self.consultation_for(caller, id).await?;
        if actor.role != Role::Admin && caller != consultation.provider_id {
            return Err(DomainError::forbidden(
                "not_the_provider",
                "only the provider consulted (or an admin) accepts a consultation",
            ));
        }
        if consultation.status != ConsultationStatus::Requested {
            return Err(transition_refused(consultation.status));
        }
        self.open_consultation(&consultation).await
    }

    /// The one place a consultation becomes `open` (payment rules hook in here):
    /// the parties' 1:1 conversation is ensured, marked `user_provider` (or
    /// `user_institution`) with the context `consultation` and this id.
    async fn open_consultation(
        &self,
        consultation: &ConsultationRecord,
    ) -> Result<(ConsultationRecord, Vec<Outgoing>), DomainError> {
        let provider = self.user(consultation.provider_id).await?;
        let audience = if provider.role == Role::Institution { "user_institution" } else { "user_provider" };
        let change =
            self.store().open_consultation(consultation.id, audience, now_ms()).await?.ok_or_else(|| {
                DomainError::conflict("invalid_transition", "the consultation is no longer requested")
            })?;
        tracing::info!(consultation_id = %consultation.id, "consultation opened");
        Ok((change.consultation.clone(), consultation_events(&change)))
    }

    /// Either party (or an admin) closes a requested or open consultation.
    #[tracing::instrument(skip_all, fields(user_id = %caller))]
    pub async fn close_consultation(
        &self,
        caller: UserId,
        id: uuid::Uuid,
    ) -> Result<(ConsultationRecord, Vec<Outgoing>), DomainError> {
        let (_, consultation) = self.consultation_for(caller, id).await?;
        if consultation.status == ConsultationStatus::Closed {
            return Err(transition_refused(consultation.status));
        }
        let change = self
            .store()
            .close_consultation(id, now_ms())
            .await?
            .ok_or_else(|| transition_refused(ConsultationStatus::Closed))?;
        tracing::info!(consultation_id = %id, "consultation closed");
        Ok((change.consultation.clone(), consultation_events(&change)))
    }

    /// A consultation, for its parties and admins.
    pub async fn consultation(&self, caller: UserId, id: uuid::Uuid) -> Result<ConsultationRecord, DomainError> {
        Ok(self.consultation_for(caller, id).await?.1)
    }

    /// The caller's consultations (either side), newest first, optionally by status.
    pub async fn consultations(
        &self,
        caller: UserId,
        status: Option<&str>,
        cursor: Option<ConsultationCursor>,
        limit: Option<u32>,
    ) -> Result<Vec<ConsultationRecord>, DomainError> {
        let status = status
            .map(|s| s.parse::<ConsultationStatus>())
            .transpose()
            .map_err(|_| DomainError::invalid("invalid_status", "status is requested, open or closed"))?;
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        Ok(self.store().consultations_of(caller, status, cursor, limit).await?)
    }

    /// The consultation and the caller's account, when the caller is a party or an
    /// admin; `consultation_not_found` for everyone else, as for no consultation.
    async fn consultation_for(
        &self,
        caller: UserId,
        id: uuid::Uuid,
    ) -> Result<(UserRecord, ConsultationRecord), DomainError> {
        let not_found = || DomainError::not_found("consultation_not_found", "no such consultation");
        let consultation = self.store().consultation(id).await?.ok_or_else(not_found)?;
        let actor = self.user(caller).await?;
        let party = consultation.user_id == caller || consultation.provider_id == caller;
        if party || actor.role == Role::Admin {
            Ok((actor, consultation))
        } else {
            Err(not_found())
        }
    }
}

fn transition_refused(now: ConsultationStatus) -> DomainError {
    DomainError::conflict("invalid_transition", format!("the consultation is {} already", now.as_str()))
}

/// The events a change wrote, as downlinks on each party's `consultation` channel.
fn consultation_events(change: &ConsultationChange) -> Vec<Outgoing> {
    let body = Consultation::from(&change.consultation);
    change
        .events
        .iter()
        .map(|(user, seq)| Outgoing::new(*user, topics::CONSULTATION, &Event::new(*seq, "consultation", &body)))
        .collect()
}
