//! Presence: online while any device is connected (the gates report counts),
//! away when the app says so, offline with a stored last-seen time. Changes reach
//! everyone who shares a conversation with the user, as ephemeral signals.

use parley_store::{PresenceRecord, StoreError};
use parley_wire::payloads::{GatePresence, Outgoing, Presence};
use parley_wire::{topics, UserId};

use crate::{now_ms, Domain, DomainError};

fn view(p: &PresenceRecord) -> Presence {
    let status = match (p.online, p.away) {
        (false, _) => "offline",
        (true, true) => "away",
        (true, false) => "online",
    };
    Presence { user_id: p.user_id, status: status.into(), last_seen_at: if p.online { None } else { p.last_seen_at } }
}

impl Domain {
    /// Applies a gate's report; returns the presence signals it causes.
    #[tracing::instrument(skip_all, fields(gate))]
    pub async fn gate_presence(&self, gate: &str, report: &GatePresence) -> Result<Vec<Outgoing>, DomainError> {
        if report.reset {
            let gone = self.store().reset_gate_presence(gate, now_ms()).await?;
            let mut out = Vec::new();
            for user in gone {
                out.extend(self.announce(user).await?);
            }
            return Ok(out);
        }
        let Some(user) = report.user_id else {
            return Err(DomainError::invalid("invalid_report", "a presence report names a user or resets"));
        };
        match self.store().set_gate_presence(user, gate, report.devices, now_ms()).await {
            Ok((before, after)) if before != after => self.announce(user).await,
            Ok(_) => Ok(Vec::new()),
            // A user id that is not an account (the gate's own readiness probe).
            Err(StoreError::MissingReference) => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The app says the user is `away` or back `online`.
    pub async fn set_status(&self, user: UserId, status: &str) -> Result<Vec<Outgoing>, DomainError> {
        let away = match status {
            "away" => true,
            "online" => false,
            _ => return Err(DomainError::invalid("invalid_status", "status is `away` or `online`")),
        };
        self.store().set_away(user, away).await?;
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

    /// `user`'s presence, to everyone sharing a conversation with it and to its own devices.
    async fn announce(&self, user: UserId) -> Result<Vec<Outgoing>, DomainError> {
        let Some(presence) = self.store().presence_of(&[user]).await?.first().map(view) else {
            return Ok(Vec::new());
        };
        let mut audience = self.store().partners_of(user).await?;
        audience.push(user);
        Ok(audience.into_iter().map(|u| Outgoing::ephemeral(u, topics::PRESENCE, &presence)).collect())
    }
}
