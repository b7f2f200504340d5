//! Presence: online while any device is connected (the gates report counts),
//! away when the app says so, offline with a stored last-seen time; providers and
//! institutions add their availability. Changes reach the user's contacts and
//! everyone who shares a conversation with the user, as ephemeral signals.

use parley_store::{PresenceRecord, ProfileChange, StoreError};
use parley_wire::payloads::{GatePresence, Outgoing, Presence};
use parley_wire::{topics, Availability, UserId};

use crate::policy::is_professional;
use crate::{now_ms, Domain, DomainError};

fn view(p: &PresenceRecord) -> Presence {
    let status = match (p.online, p.away) {
        (false, _) => "offline",
        (true, true) => "away",
        (true, false) => "online",
    };
    Presence {
        user_id: p.user_id,
        status: status.into(),
        last_seen_at: if p.online { None } else { p.last_seen_at },
        // Only the accounts that may set it show it (a former provider's value stays hidden).
        availability: if is_professional(p.role) { p.availability } else { None },
    }
}

impl Domain {
    /// Applies a gate's report; returns the presence signals it causes.
    #[tracing::instrument(skip_all, fields(gate))]
    pub async fn gate_presence(&self, gate: &str, report: &GatePresence) -> Result<Vec<Outgoing>, DomainError> {
        let now = now_ms();
        // Reports of gates that predate the sequence count as of now.
        let seq = if report.seq > 0 { report.seq } else { now };
        if report.reset {
            let gone = self.store().reset_gate_presence(gate, seq, now).await?;
            let mut out = Vec::new();
            for user in gone {
                out.extend(self.announce(user).await?);
            }
            return Ok(out);
        }
        let Some(user) = report.user_id else {
            return Err(DomainError::invalid("invalid_report", "a presence report names a user or resets"));
        };
        match self.store().set_gate_presence(user, gate, report.devices, seq, now).await {
            Ok((before, after)) if before != after => self.announce(user).await,
            Ok(_) => Ok(Vec::new()),
            // A user id that is not an account (the gate's own readiness probe).
            Err(StoreError::MissingReference) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The app says the user is `away` or back `online`, and/or (providers and
    /// institutions) how available it is; one presence signal announces both.
    pub async fn set_presence(
        &self,
        user: UserId,
        status: Option<&str>,
        availability: Option<&str>,
    ) -> Result<Vec<Outgoing>, DomainError> {
        let away = match status {
            None => None,
            Some("away") => Some(true),
            Some("online") => Some(false),
            Some(_) => return Err(DomainError::invalid("invalid_status", "status is `away` or `online`")),
        };
        let availability = availability.map(|a| a.parse::<Availability>()).transpose().map_err(|_| {
            DomainError::invalid("invalid_availability", "availability is available, busy or unavailable")
        })?;
        if away.is_none() && availability.is_none() {
            return Err(DomainError::invalid("invalid_status", "give `status` (away or online) or `availability`"));
        }
        if let Some(a) = availability {
            if !is_professional(self.user(user).await?.role) {
                return Err(DomainError::forbidden(
                    "field_not_allowed",
                    "availability is for provider and institution accounts",
                ));
            }
            let change = ProfileChange { availability: Some(Some(a)), ..Default::default() };
            self.store().update_profile(user, &change).await?;
        }
        if let Some(away) = away {
            self.store().set_away(user, away).await?;
        }
        self.announce(user).await
    }

    /// The presence of users (unknown ids are left out).
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>, DomainError> {
        Ok(self.store().presence_of(users).await?.iter().map(view).collect())
    }

    /// The presence of those of `users` who share a conversation with `caller` (or are the caller).
    pub async fn presence_seen_by(&self, caller: UserId, users: &[UserId]) -> Result<Vec<Presence>, DomainError> {
        let partners = self.store().partners_of(caller).await?;
        let visible: Vec<UserId> = users.iter().copied().filter(|u| *u == caller || partners.contains(u)).collect();
        self.presence(&visible).await
    }

    /// `user`'s presence, to its contacts, everyone sharing a conversation with it and its own devices.
    pub(crate) async fn announce(&self, user: UserId) -> Result<Vec<Outgoing>, DomainError> {
        let Some(presence) = self.store().presence_of(&[user]).await?.first().map(view) else {
            return Ok(Vec::new());
        };
        let mut audience = self.store().partners_of(user).await?;
        audience.push(user);
        Ok(audience.into_iter().map(|u| Outgoing::ephemeral(u, topics::PRESENCE, &presence)).collect())
    }
}
