//! Sign-ins: opening one at login, rotating its refresh token (with reuse
//! detection and a grace window for lost responses), ending one or all of them.
//! Ending a sign-in also tells the gates, which disconnect its devices.

use parley_store::{NewSession, Rotation, SessionRecord, UserRecord};
use parley_wire::payloads::Outgoing;
use parley_wire::{topics, UserId};
use uuid::Uuid;

use crate::accounts::ClientInfo;
use crate::tokens::Grant;
use crate::{now_ms, Domain, DomainError, Tokens};

/// What a successful login or refresh hands the client.
#[derive(Debug, Clone)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The sign-in this pair belongs to.
    pub session_id: Uuid,
    pub user: UserRecord,
    /// For an institution's sign-in: the member acting for it.
    pub actor: Option<UserId>,
}

/// What the gates are told when sign-ins end: `to/{uid}/session` with the ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionsRevoked {
    pub revoked: Vec<Uuid>,
}

/// Sign-ins ended, and the downlink telling the gates.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub count: usize,
    pub downlinks: Vec<Outgoing>,
}

/// Longest user agent kept for the list of sign-ins.
const MAX_USER_AGENT: usize = 200;

impl Domain {
    /// Opens a sign-in for `user` and hands out its first token pair.
    pub(crate) async fn open_session(&self, user: UserRecord, client: &ClientInfo) -> Result<Session, DomainError> {
        self.open_session_as(user, None, client).await
    }

    /// Opens a sign-in; with `acting` = (member, the member's sign-in, its end), one
    /// of an institution for that member, ending no later than the member's own.
    pub(crate) async fn open_session_as(
        &self,
        user: UserRecord,
        acting: Option<(UserId, Uuid, i64)>,
        client: &ClientInfo,
    ) -> Result<Session, DomainError> {
        let now = now_ms();
        let settings = self.tokens().settings();
        let (refresh_token, hash) = Tokens::new_refresh_token();
        let id = Uuid::now_v7();
        let new = NewSession {
            id,
            user: user.id,
            token_hash: Some(hash),
            acting: acting.map(|(actor, parent, _)| (actor, parent)),
            now_ms: now,
            token_expires_at_ms: now + settings.refresh_ttl.as_millis() as i64,
            expires_at_ms: (now + self.auth().policy.session_lifetime.as_millis() as i64)
                .min(acting.map_or(i64::MAX, |(_, _, ends)| ends)),
            user_agent: client.user_agent.as_ref().map(|a| a.chars().take(MAX_USER_AGENT).collect()),
            client_addr: client.addr.clone(),
        };
        self.store().create_session(&new).await?;
        let actor = acting.map(|(actor, _, _)| actor);
        let access_token = self.tokens().issue_access_with(user.id, id, grant(actor), now / 1000);
        Ok(Session {
            access_token,
            refresh_token,
            expires_in: settings.access_ttl.as_secs(),
            session_id: id,
            user,
            actor,
        })
    }

    /// Exchanges a refresh token for a new pair. A used token presented again
    /// outside the grace window revokes its sign-in (and the gates are told, through
    /// the returned downlinks, even though the caller gets an error).
    #[tracing::instrument(skip_all)]
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session, (DomainError, Vec<Outgoing>)> {
        let refused = || DomainError::unauthorized("invalid_refresh_token", "refresh token is invalid or expired");
        let now = now_ms();
        let settings = self.tokens().settings().clone();
        let (token, new_hash) = Tokens::new_refresh_token();
        let rotation = self
            .store()
            .rotate_refresh_token(
                &Tokens::hash_refresh_token(refresh_token),
                &new_hash,
                now,
                settings.refresh_ttl.as_millis() as i64,
                self.auth().policy.reuse_grace.as_millis() as i64,
            )
            .await
            .map_err(|e| (e.into(), Vec::new()))?;
        match rotation {
            Rotation::Rotated { user, session, actor } => {
                let account = self.user(user).await.map_err(|_| (refused(), Vec::new()))?;
                let access_token = self.tokens().issue_access_with(user, session, grant(actor), now / 1000);
                Ok(Session {
                    access_token,
                    refresh_token: token,
                    expires_in: settings.access_ttl.as_secs(),
                    session_id: session,
                    user: account,
                    actor,
                })
            }
            Rotation::Refused => Err((refused(), Vec::new())),
            Rotation::Reused { user, session } => {
                tracing::warn!(user_id = %user, session_id = %session, "refresh token reused; sign-in revoked");
                let error = DomainError::unauthorized(
                    "refresh_token_reused",
                    "this refresh token was already used; the sign-in is revoked, log in again",
                );
                Err((error, vec![revocation(user, vec![session])]))
            }
        }
    }

    /// Ends `user`'s sign-ins: `which` one, or all (sparing `except`), with the
    /// institution sign-ins opened from them. Returns how many ended and the
    /// downlinks that make the gates disconnect their devices.
    pub async fn revoke_sessions(
        &self,
        user: UserId,
        which: Option<Uuid>,
        except: Option<Uuid>,
        reason: &str,
    ) -> Result<Revoked, DomainError> {
        let revoked = self.store().revoke_sessions(user, which, except, reason, now_ms()).await?;
        tracing::info!(user_id = %user, count = revoked.len(), reason, "sign-ins revoked");
        let count = revoked.len();
        let mut by_user: Vec<(UserId, Vec<Uuid>)> = Vec::new();
        for (owner, id) in revoked {
            match by_user.iter_mut().find(|(u, _)| *u == owner) {
                Some((_, ids)) => ids.push(id),
                None => by_user.push((owner, vec![id])),
            }
        }
        let downlinks = by_user.into_iter().map(|(owner, ids)| revocation(owner, ids)).collect();
        Ok(Revoked { count, downlinks })
    }

    /// Ends one of the caller's sign-ins by id; `session_not_found` if it is not a live one of theirs.
    pub async fn revoke_session(&self, user: UserId, session: Uuid) -> Result<Revoked, DomainError> {
        let revoked = self.revoke_sessions(user, Some(session), None, "signed_out").await?;
        if revoked.count == 0 {
            return Err(DomainError::not_found("session_not_found", "no live sign-in with that id"));
        }
        Ok(revoked)
    }

    /// The caller's live sign-ins, newest first.
    pub async fn sessions(&self, user: UserId) -> Result<Vec<SessionRecord>, DomainError> {
        Ok(self.store().sessions_of(user, now_ms()).await?)
    }

    /// Whether an access token's sign-in is still live (not revoked, not ended).
    pub async fn session_live(&self, user: UserId, session: Uuid) -> Result<bool, DomainError> {
        Ok(self.store().session_live(user, session, now_ms()).await?)
    }
}

fn grant(actor: Option<UserId>) -> Grant {
    actor.map_or(Grant::Account, |actor| Grant::Acting { actor })
}

/// The downlink telling the gates that `user`'s sign-ins `revoked` ended.
pub(crate) fn revocation(user: UserId, revoked: Vec<Uuid>) -> Outgoing {
    Outgoing::new(user, topics::SESSION, &SessionsRevoked { revoked })
}
