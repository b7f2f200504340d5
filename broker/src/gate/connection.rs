//! One device connection: CONNECT and authentication, then the packet loop
//! (publish, subscribe, acknowledgements, keepalive) until the device leaves, is
//! pushed out by a takeover, breaks the protocol, or the gate shuts down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parley_domain::Grant;
use parley_wire::payloads::GatePresence;
use parley_wire::{topics, DeviceRights, UserId};
use rumqttc::QoS;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acl::{self, Verdict};
use super::codec::{
    self, AckReason, CloseReason, ConnAckProps, ConnectInfo, DecodeError, Inbound, Outbound, Protocol, Publish,
    Refusal, SubResult, SubscribeFilter,
};
use super::downlink;
use super::limits::{Throttle, Turned};
use super::namespace::{self, Namespace};
use super::session::{Delivery, GateStats, Inflight, Session, Subscription};
use super::transport::{Kind, Transport};
use super::Shared;

/// Topic aliases the gate accepts from a device, and uses at most towards one.
const TOPIC_ALIAS_MAX: u16 = 32;

/// Serves one accepted socket to its end: transport handshakes and CONNECT under
/// one deadline, admission, credentials, then the device's packets.
///
/// A task is as large as the largest state its future passes through, for its
/// whole life. The opening is larger than the long connected life that follows,
/// so it runs boxed and is freed once the device is in: an idle device holds only
/// [`Connection`] and its loop.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, kind: Kind, shutdown: CancellationToken) {
    let Some((conn, span)) = Box::pin(open(shared, tcp, peer, kind)).await else { return };
    conn.live(shutdown).instrument(span).await
}

/// Everything before the connected life: handshakes, CONNECT, admission,
/// credentials, and the CONNACK of a refusal. `None` when the device is not in.
async fn open(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
) -> Option<(Box<Connection>, tracing::Span)> {
    let mut rbuf = BytesMut::new();
    let opening = async {
        let mut transport = Transport::handshake(kind, tcp, &shared.settings.transport).await.inspect_err(|_| {
            GateStats::bump(&shared.stats.handshakes_failed);
        })?;
        let connect = read_connect(&shared, &mut transport, &mut rbuf).await.map_err(str::to_string)?;
        Ok::<_, String>((transport, connect))
    };
    let (mut transport, connect) = match timeout(shared.settings.connect_timeout, opening).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(reason)) => {
            tracing::debug!(%peer, %kind, reason, "connection closed before CONNECT completed");
            return None;
        }
        Err(_) => {
            GateStats::bump(&shared.stats.handshakes_timed_out);
            tracing::debug!(%peer, %kind, "no handshake and CONNECT in time; closed");
            return None;
        }
    };
    let protocol = connect.protocol;
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let accepted = match admit(&shared, &connect, peer) {
        Ok(()) => authorize(&shared, connect, id).await,
        Err(refusal) => Err(refusal),
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(refusal) => {
            GateStats::bump(&shared.stats.connections_refused);
            tracing::info!(%peer, %kind, ?refusal, "CONNECT refused");
            let mut out = BytesMut::new();
            codec::write(
                protocol,
                Outbound::ConnAck { session_present: false, refusal: Some(refusal), props: ConnAckProps::default() },
                &mut out,
            );
            let _ = timeout(shared.settings.write_timeout, transport.write_all(out.freeze())).await;
            transport.close().await;
            return None;
        }
    };
    GateStats::bump(&shared.stats.connections_accepted);
    let span = tracing::info_span!("device", user_id = %accepted.user, client_id = %accepted.session.client_id, %peer);
    span.in_scope(|| tracing::info!(protocol = ?protocol, %kind, present = accepted.present, "device connected"));
    let throttle = Throttle::new(shared.settings.publish_rate, shared.settings.byte_rate);
    let conn = Box::new(Connection {
        shared,
        transport,
        rbuf,
        wbuf: BytesMut::new(),
        accepted,
        id,
        throttle,
        paused_until: None,
        aliases_in: HashMap::new(),
        aliases_out: HashMap::new(),
    });
    Some((conn, span))
}

/// What a successful CONNECT established.
struct Accepted {
    protocol: Protocol,
    user: UserId,
    /// The user id as the device wrote it, used for ACL prefixes.
    user_text: String,
    session: Arc<Session>,
    present: bool,
    /// Cancelled when another connection takes the session over.
    kick: CancellationToken,
    /// Cancelled when the sign-in behind the token is revoked.
    revoked: CancellationToken,
    /// When the access token expires (the device must reconnect with a fresh one).
    token_expires: Instant,
    assigned_client_id: Option<String>,
    /// A kiosk device's rights (what it may publish); `None` for people's accounts.
    rights: Option<DeviceRights>,
    keep_alive: KeepAlive,
    will: Option<codec::Will>,
    /// Aliases the v5 device accepts from the gate.
    topic_alias_max: u16,
    outbound_window: usize,
    outbound_max_packet: Option<u32>,
}

/// The keepalive in force: the device's, or the one the gate told a v5 device to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    Asked(u16),
    Told(u16),
}

impl KeepAlive {
    fn secs(self) -> u16 {
        match self {
            KeepAlive::Asked(s) | KeepAlive::Told(s) => s,
        }
    }
}

/// How a connection ended; decides what the device is told and whether the will goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// DISCONNECT from the device; `with_will` is v5's "disconnect with will".
    Disconnected { with_will: bool },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    /// The gate closes it, telling a v5 device why.
    Closed(CloseReason),
}

async fn read_connect(
    shared: &Shared,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<ConnectInfo, &'static str> {
    loop {
        match codec::read_connect(rbuf, shared.settings.max_packet_size) {
            Ok(c) => return Ok(c),
            Err(DecodeError::Incomplete) => {}
            Err(DecodeError::UnsupportedVersion(_)) => {
                // 3.1.1 §3.2.2.3: answer an unacceptable level with return code 0x01.
                let mut out = BytesMut::new();
                codec::write(
                    Protocol::V4,
                    Outbound::ConnAck {
                        session_present: false,
                        refusal: Some(Refusal::UnsupportedVersion),
                        props: ConnAckProps::default(),
                    },
                    &mut out,
                );
                let _ = transport.write_all(out.freeze()).await;
                return Err("unsupported protocol version");
            }
            Err(DecodeError::TooLarge(_)) => {
                GateStats::bump(&shared.stats.packets_too_large);
                return Err("CONNECT larger than the maximum packet size");
            }
            Err(e) => {
                GateStats::bump(&shared.stats.malformed_packets);
                tracing::debug!(error = %e, "bad first packet");
                return Err("first packet malformed, too large or not CONNECT");
            }
        }
        match transport.read(rbuf).await {
            Ok(0) | Err(_) => return Err("closed"),
            Ok(_) => {}
        }
    }
}

/// What is checked before the credentials: the address's connection rate, the
/// flapping ban, the client id and the keepalive. None of it costs more than a
/// map lookup.
fn admit(shared: &Shared, c: &ConnectInfo, peer: SocketAddr) -> Result<(), Refusal> {
    match shared.admission.admit(peer.ip(), c.username.as_deref().unwrap_or(""), &c.client_id) {
        Ok(()) => {}
        Err(Turned::ConnectionRate) => {
            GateStats::bump(&shared.stats.connections_rate_limited);
            return Err(Refusal::ConnectionRate);
        }
        Err(Turned::Banned) => {
            GateStats::bump(&shared.stats.connections_banned);
            return Err(Refusal::Banned);
        }
    }
    if c.client_id.len() > shared.settings.max_client_id_len
        || (c.client_id.is_empty() && !c.clean_start && c.protocol == Protocol::V4)
    {
        return Err(Refusal::BadClientId);
    }
    // 3.1.1 cannot be told another keepalive: refuse, as Mosquitto does ("identifier rejected").
    let max = shared.settings.max_keep_alive;
    if c.protocol == Protocol::V4 && (c.keep_alive > max || (c.keep_alive == 0 && max < u16::MAX)) {
        return Err(Refusal::BadClientId);
    }
    Ok(())
}

/// Checks credentials (the token, and that its sign-in is live) and the will, then
/// attaches the session.
async fn authorize(shared: &Shared, mut c: ConnectInfo, connection: u64) -> Result<Accepted, Refusal> {
    let anonymous_allowed = shared.namespace.as_ref().is_some_and(|ns| ns.allow_anonymous);
    let (username, password) = match (c.username.take(), c.password.take()) {
        (Some(u), Some(p)) => (u, p),
        (None, None) if anonymous_allowed => return attach(shared, c, connection, Identity::anonymous()).await,
        _ => return Err(Refusal::BadCredentials),
    };
    // The username is the user id: anything else is refused before the token is verified.
    if username.len() != 36 || username.parse::<UserId>().is_err() {
        return Err(Refusal::BadCredentials);
    }
    let claims = shared.domain.tokens().verify_access(&password).map_err(|_| Refusal::BadCredentials)?;
    let user = claims.user().map_err(|_| Refusal::BadCredentials)?;
    let sign_in = claims.session().map_err(|_| Refusal::BadCredentials)?;
    let rights = match claims.grant().map_err(|_| Refusal::BadCredentials)? {
        Grant::Device(rights) => Some(rights),
        Grant::Account | Grant::Acting { .. } => None,
    };
    if username != claims.sub {
        return Err(Refusal::NotAuthorized);
    }
    match shared.domain.session_live(user, sign_in).await {
        Ok(true) => {}
        Ok(false) => return Err(Refusal::NotAuthorized),
        Err(e) => {
            tracing::error!(error = %e, "cannot check the sign-in of a CONNECT");
            return Err(Refusal::ServerUnavailable);
        }
    }
    let left = u64::try_from(claims.exp - super::chrono_free_now_secs()).unwrap_or(0);
    let identity = Identity {
        user,
        user_text: username,
        sign_in,
        rights,
        token_expires: Instant::now() + Duration::from_secs(left),
    };
    attach(shared, c, connection, identity).await
}

/// Who a connection is: a user (from the token), or anonymous (open namespace only).
struct Identity {
    user: UserId,
    /// The user id as the device wrote it, for ACL prefixes; empty when anonymous.
    user_text: String,
    sign_in: uuid::Uuid,
    rights: Option<DeviceRights>,
    token_expires: Instant,
}

impl Identity {
    fn anonymous() -> Self {
        Identity {
            user: namespace::ANONYMOUS,
            user_text: String::new(),
            sign_in: uuid::Uuid::nil(),
            rights: None,
            // Far away: anonymous clients have no token to expire.
            token_expires: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
        }
    }
}

/// Checks the will, then attaches the session.
async fn attach(shared: &Shared, mut c: ConnectInfo, connection: u64, id: Identity) -> Result<Accepted, Refusal> {
    let Identity { user, user_text: username, sign_in, rights, token_expires } = id;
    if let Some(will) = &mut c.will {
        let open = shared.namespace.as_ref().is_some_and(|ns| ns.contains(&will.topic));
        let allowed = if open {
            acl::publish(&username, &will.topic, &shared.settings.topics) != Verdict::Invalid
        } else {
            // On Parley's topics the will's retain flag is ignored, like a publish's.
            !username.is_empty()
                && acl::publish_as(&username, rights, &will.topic, &shared.settings.topics) == Verdict::Allowed
        };
        if !allowed {
            return Err(Refusal::NotAuthorized);
        }
    }
    let assigned_client_id = c.client_id.is_empty().then(|| format!("auto-{}", uuid::Uuid::new_v4().simple()));
    let client_id = assigned_client_id.clone().unwrap_or(c.client_id);
    let limit = shared.settings.session_expiry;
    let expiry = match c.protocol {
        Protocol::V4 => (!c.clean_start).then_some(limit),
        Protocol::V5 => c.session_expiry.map(|s| Duration::from_secs(u64::from(s)).min(limit)).filter(|d| !d.is_zero()),
    };
    // Anonymous clients share one "user": its session limit is the gate's.
    let max_sessions = if user == namespace::ANONYMOUS { usize::MAX } else { shared.settings.max_sessions_per_user };
    let attached = shared
        .registry
        .attach(user, &client_id, connection, sign_in, c.clean_start, expiry, max_sessions)
        .ok_or(Refusal::QuotaExceeded)?;
    // The user's downlinks must reach this gate before the device hears CONNACK.
    shared.await_downlinks(user, &attached, connection).await?;
    let window =
        usize::from(shared.settings.max_inflight.max(1)).min(usize::from(c.receive_maximum.unwrap_or(u16::MAX).max(1)));
    Ok(Accepted {
        protocol: c.protocol,
        user,
        user_text: username,
        session: attached.session,
        present: attached.present,
        kick: attached.kick,
        revoked: attached.revoked,
        token_expires,
        assigned_client_id,
        rights,
        keep_alive: match (c.protocol, shared.settings.max_keep_alive) {
            (Protocol::V5, max) if max < u16::MAX && (c.keep_alive == 0 || c.keep_alive > max) => KeepAlive::Told(max),
            _ => KeepAlive::Asked(c.keep_alive),
        },
        will: c.will,
        topic_alias_max: c.topic_alias_max,
        outbound_window: window,
        outbound_max_packet: c.max_packet_size,
    })
}

struct Connection {
    shared: Arc<Shared>,
    transport: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    accepted: Accepted,
    id: u64,
    throttle: Throttle,
    /// Set while the device is over its publish or byte rate: nothing is read until then.
    paused_until: Option<Instant>,
    /// Topic aliases the device set (v5), and those the gate set for the device.
    aliases_in: HashMap<u16, String>,
    aliases_out: HashMap<String, u16>,
}

impl Connection {
    /// The connected life: presence, the packet loop, and what its end calls for.
    async fn live(mut self: Box<Self>, shutdown: CancellationToken) {
        Box::pin(report_presence(&self.shared, self.accepted.user)).await;
        let end = self.run(shutdown).await;
        Box::pin(self.finish(end)).await;
    }

    fn send(&mut self, packet: Outbound) {
        codec::write(self.accepted.protocol, packet, &mut self.wbuf);
    }

    async fn flush(&mut self) -> Result<(), ()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        // The whole buffer goes: an idle device keeps no write buffer.
        let out = std::mem::take(&mut self.wbuf).freeze();
        match timeout(self.shared.settings.write_timeout, self.transport.write_all(out)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) -> End {
        let settings = &self.shared.settings;
        let session_expiry = {
            let st = self.accepted.session.state();
            st.expiry.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        };
        let props = ConnAckProps {
            assigned_client_id: self.accepted.assigned_client_id.clone(),
            session_expiry,
            receive_maximum: Some(settings.max_inflight.max(1)),
            max_packet_size: Some(settings.max_packet_size as u32),
            topic_alias_max: Some(TOPIC_ALIAS_MAX),
            retain_available: self.shared.namespace.is_some(),
            shared_subscriptions_available: self.shared.namespace.is_some(),
            server_keep_alive: match self.accepted.keep_alive {
                KeepAlive::Told(secs) => Some(secs),
                KeepAlive::Asked(_) => None,
            },
        };
        self.send(Outbound::ConnAck { session_present: self.accepted.present, refusal: None, props });
        let kick = self.accepted.kick.clone();
        let revoked = self.accepted.revoked.clone();
        // One timer for the connection's whole life, not one per wake-up.
        let token_expired = tokio::time::sleep_until(self.accepted.token_expires);
        tokio::pin!(token_expired);
        self.resend_inflight();
        self.drain();
        if self.flush().await.is_err() {
            return End::Lost;
        }
        let keep_alive = match self.accepted.keep_alive.secs() {
            0 => None,
            secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
        };
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        let session = self.accepted.session.clone();
        loop {
            let paused = self.paused_until;
            let idle = async {
                match deadline {
                    // A paused connection is not read, so it cannot be idle.
                    Some(d) if paused.is_none() => tokio::time::sleep_until(d).await,
                    _ => std::future::pending().await,
                }
            };
            let resume = async {
                match paused {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let end = tokio::select! {
                _ = shutdown.cancelled() => Some(End::Closed(CloseReason::ShuttingDown)),
                _ = kick.cancelled() => Some(End::Closed(CloseReason::SessionTakenOver)),
                _ = revoked.cancelled() => Some(End::Closed(CloseReason::SessionRevoked)),
                _ = &mut token_expired => Some(End::Closed(CloseReason::TokenExpired)),
                _ = idle => Some(End::Closed(CloseReason::KeepAliveTimeout)),
                _ = session.notify.notified() => {
                    self.drain();
                    None
                }
                _ = resume => {
                    self.paused_until = None;
                    deadline = keep_alive.map(|k| Instant::now() + k);
                    // Settle what is still owed, then handle what was left unread.
                    let wait = self.throttle.read(0);
                        self.pause_for(wait);
                    match self.paused_until {
                        Some(_) => None,
                        None => self.handle_input().await,
                    }
                }
                read = self.transport.read(&mut self.rbuf), if paused.is_none() => match read {
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        GateStats::bump(&self.shared.stats.malformed_packets);
                        tracing::warn!(error = %e, "not MQTT; closing");
                        Some(End::Closed(CloseReason::Malformed))
                    }
                    Ok(0) | Err(_) => Some(End::Lost),
                    Ok(n) => {
                        deadline = keep_alive.map(|k| Instant::now() + k);
                        let end = self.handle_input().await;
                        if self.rbuf.is_empty() {
                            // Everything read was handled: an idle device keeps no read buffer.
                            self.rbuf = BytesMut::new();
                        }
                        let wait = self.throttle.read(n);
                        self.pause_for(wait);
                        end
                    }
                },
            };
            if let Some(end) = end {
                return end;
            }
            if self.flush().await.is_err() {
                return End::Lost;
            }
        }
    }

    /// Stops reading from the device for `wait`, if any (it went over a rate).
    fn pause_for(&mut self, wait: Option<Duration>) {
        if let Some(wait) = wait {
            let until = Instant::now() + wait;
            if self.paused_until.is_none() {
                GateStats::bump(&self.shared.stats.connections_throttled);
                tracing::debug!(?wait, "device over its rate; reading paused");
            }
            self.paused_until = Some(self.paused_until.map_or(until, |t| t.max(until)));
        }
    }

    /// Handles every complete packet in the read buffer, unless the device runs over
    /// its publish rate: then the rest waits in the buffer.
    async fn handle_input(&mut self) -> Option<End> {
        loop {
            if self.paused_until.is_some() {
                return None;
            }
            if self.rbuf.first().is_some_and(|b| b >> 4 == 3) && codec::complete(&self.rbuf) {
                if let Some(wait) = self.throttle.publish() {
                    self.pause_for(Some(wait));
                    return None;
                }
            }
            let packet = match codec::read(self.accepted.protocol, &mut self.rbuf, self.shared.settings.max_packet_size)
            {
                Ok(p) => p,
                Err(DecodeError::Incomplete) => return None,
                Err(DecodeError::TooLarge(n)) => {
                    GateStats::bump(&self.shared.stats.packets_too_large);
                    tracing::warn!(size = n, "packet larger than allowed; closing");
                    return Some(End::Closed(CloseReason::PacketTooLarge));
                }
                Err(e) => {
                    GateStats::bump(&self.shared.stats.malformed_packets);
                    tracing::warn!(error = %e, "malformed packet; closing");
                    return Some(End::Closed(CloseReason::Malformed));
                }
            };
            if let Some(end) = self.handle(packet).await {
                return Some(end);
            }
        }
    }

    async fn handle(&mut self, packet: Inbound) -> Option<End> {
        match packet {
            Inbound::Publish(p) => return self.publish(p).await,
            Inbound::PubAck(pkid) | Inbound::PubComp(pkid) => {
                let mut st = self.accepted.session.state();
                if let Some(pos) = st.inflight.iter().position(|i| i.pkid == pkid) {
                    st.inflight.remove(pos);
                }
                drop(st);
                self.drain();
            }
            Inbound::PubRec(pkid) => {
                // QoS 2 towards the device, second step: release it.
                if let Some(i) = self.accepted.session.state().inflight.iter_mut().find(|i| i.pkid == pkid) {
                    i.released = true;
                }
                self.send(Outbound::PubRel(pkid));
            }
            Inbound::PubRel(pkid) => {
                self.accepted.session.state().incoming_qos2.remove(&pkid);
                self.send(Outbound::PubComp(pkid));
            }
            Inbound::Subscribe { pkid, filters, id } => return self.subscribe(pkid, filters, id),
            Inbound::Unsubscribe { pkid, filters } => {
                let count = filters.len();
                self.accepted.session.state().subscriptions.retain(|s| !filters.contains(&s.filter));
                self.send(Outbound::UnsubAck { pkid, count });
            }
            Inbound::PingReq => self.send(Outbound::PingResp),
            Inbound::Disconnect { with_will, session_expiry } => {
                if let Some(secs) = session_expiry {
                    // MQTT 5: DISCONNECT may change the session's expiry (within the gate's limit).
                    let expiry = Duration::from_secs(u64::from(secs)).min(self.shared.settings.session_expiry);
                    self.accepted.session.state().expiry = (!expiry.is_zero()).then_some(expiry);
                }
                return Some(End::Disconnected { with_will });
            }
            Inbound::ProtocolViolation(what) => {
                tracing::warn!(what, "protocol violation; closing");
                return Some(End::Closed(CloseReason::ProtocolError));
            }
        }
        None
    }

    async fn publish(&mut self, mut p: Publish) -> Option<End> {
        let v5 = self.accepted.protocol == Protocol::V5;
        if let Some(alias) = p.topic_alias {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return Some(End::Closed(CloseReason::TopicAliasInvalid));
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(topic) => p.topic = topic.clone(),
                    // An alias never set (MQTT 5 §3.3.4): protocol error.
                    None => return Some(End::Closed(CloseReason::ProtocolError)),
                }
            } else if acl::publish(&self.accepted.user_text, &p.topic, &self.shared.settings.topics) != Verdict::Invalid
            {
                self.aliases_in.insert(alias, p.topic.clone());
            }
        }
        let limits = &self.shared.settings.topics;
        let open = self.shared.namespace.as_ref().is_some_and(|ns| ns.contains(&p.topic));
        let verdict = if open {
            // Anyone may publish here, retained too; only the topic's form is checked.
            match acl::publish(&self.accepted.user_text, &p.topic, limits) {
                Verdict::Invalid => Verdict::Invalid,
                _ => Verdict::Allowed,
            }
        } else if p.retain && v5 && self.shared.namespace.is_none() {
            // CONNACK said retained messages are not available.
            return Some(End::Closed(CloseReason::RetainNotSupported));
        } else if (p.retain && v5) || self.accepted.user_text.is_empty() {
            // Never retained on Parley's topics; anonymous clients have none.
            match acl::publish(&self.accepted.user_text, &p.topic, limits) {
                Verdict::Invalid => Verdict::Invalid,
                _ => Verdict::NotAuthorized,
            }
        } else {
            acl::publish_as(&self.accepted.user_text, self.accepted.rights, &p.topic, limits)
        };
        match verdict {
            Verdict::Allowed => {}
            Verdict::Invalid => {
                tracing::warn!(topic = %p.topic, "invalid topic; closing");
                return Some(End::Closed(CloseReason::TopicNameInvalid));
            }
            Verdict::NotAuthorized => {
                GateStats::bump(&self.shared.stats.publishes_refused);
                tracing::warn!(topic = %p.topic, "publish outside the user's topics refused");
                self.report_refusal(&p.topic);
                // 3.1.1 cannot refuse a publish: acknowledge it and drop it (§3.3.5).
                match p.qos {
                    1 => self.send(Outbound::PubAck { pkid: p.pkid, reason: AckReason::NotAuthorized }),
                    2 => self.send(Outbound::PubRec { pkid: p.pkid, reason: AckReason::NotAuthorized }),
                    _ => {}
                }
                return None;
            }
        }
        let duplicate = if p.qos == 2 {
            let mut st = self.accepted.session.state();
            if !st.incoming_qos2.contains(&p.pkid)
                && st.incoming_qos2.len() >= usize::from(self.shared.settings.max_inflight)
            {
                // More unreleased QoS 2 publishes than the Receive Maximum we announced.
                return Some(End::Closed(CloseReason::ReceiveMaximumExceeded));
            }
            !st.incoming_qos2.insert(p.pkid)
        } else {
            false
        };
        if !duplicate {
            // QoS 0 stays QoS 0 (typing and the like); 1 and 2 travel the bus at QoS 1.
            // Waiting here pushes back on a fast device.
            let qos = if p.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            let (topic, payload) = if open {
                Namespace::envelope(&namespace::session_key(&self.accepted.session), &p)
            } else {
                (p.topic, p.payload)
            };
            if let Err(e) = self.shared.uplinks.send(topic, qos, payload).await {
                tracing::error!(error = %e, "bus refused an uplink; closing");
                return Some(End::Closed(CloseReason::ShuttingDown));
            }
        }
        match p.qos {
            1 => self.send(Outbound::PubAck { pkid: p.pkid, reason: AckReason::Success }),
            2 => self.send(Outbound::PubRec { pkid: p.pkid, reason: AckReason::Success }),
            _ => {}
        }
        None
    }

    fn subscribe(&mut self, pkid: u16, filters: Vec<SubscribeFilter>, id: Option<usize>) -> Option<End> {
        let max = self.shared.settings.max_subscriptions;
        let limits = self.shared.settings.topics;
        let namespace = self.shared.namespace.clone();
        let session = self.accepted.session.clone();
        let mut st = session.state();
        let mut results = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for SubscribeFilter { filter, qos, no_local, retain_as_published, retain_handling } in filters {
            // `$share/{group}/{filter}`: checked as its filter, and only in the open namespace.
            let (group, inner) = match namespace::split_shared(&filter) {
                Ok(Some((group, inner))) => (Some(group.to_string()), inner),
                Ok(None) => (None, filter.as_str()),
                // A malformed `$share/` filter: checked as the empty filter, which is invalid.
                Err(()) => (None, ""),
            };
            if group.is_some() && no_local {
                tracing::warn!(%filter, "No Local on a shared subscription; closing");
                return Some(End::Closed(CloseReason::ProtocolError));
            }
            let open = namespace.as_ref().filter(|ns| ns.contains(inner));
            let verdict = match acl::subscribe(&self.accepted.user_text, inner, &limits) {
                Verdict::Invalid => Verdict::Invalid,
                _ if filter.len() > limits.max_len => Verdict::Invalid,
                _ if open.is_some() => Verdict::Allowed,
                // Shared subscriptions in Parley's own topics are for the platform.
                _ if self.accepted.user_text.is_empty() || group.is_some() => Verdict::NotAuthorized,
                verdict => verdict,
            };
            let result = match verdict {
                Verdict::Invalid => SubResult::FilterInvalid,
                Verdict::NotAuthorized => SubResult::NotAuthorized,
                Verdict::Allowed => {
                    // Delivered QoS is the lower of the message's and this one.
                    let granted = qos.min(2);
                    let shared = group.is_some();
                    let subscription =
                        Subscription { filter: filter.clone(), group, qos: granted, id, no_local, retain_as_published };
                    let existing = st.subscriptions.iter().position(|s| s.filter == filter);
                    let result = match existing {
                        Some(i) => {
                            st.subscriptions[i] = subscription;
                            SubResult::Granted(granted)
                        }
                        None if st.subscriptions.len() >= max => SubResult::QuotaExceeded,
                        None => {
                            st.subscriptions.push(subscription);
                            SubResult::Granted(granted)
                        }
                    };
                    // Retain Handling: 0 sends retained messages, 1 only for a new subscription, 2
                    // never; a shared subscription never gets them.
                    let send_retained =
                        !shared && (retain_handling == 0 || (retain_handling == 1 && existing.is_none()));
                    if let (Some(ns), SubResult::Granted(_), true) = (open, result, send_retained) {
                        retained.extend(ns.retained_for(&filter, granted, id));
                    }
                    result
                }
            };
            if !matches!(result, SubResult::Granted(_)) {
                GateStats::bump(&self.shared.stats.subscriptions_refused);
                tracing::warn!(%filter, ?result, "subscription refused");
            }
            results.push(result);
        }
        st.queue.extend(retained);
        drop(st);
        self.send(Outbound::SubAck { pkid, results });
        self.drain();
        None
    }

    /// Tells the device, on `to/{uid}/error`, which topic it may not publish to.
    fn report_refusal(&self, topic: &str) {
        if self.accepted.user_text.is_empty() {
            return;
        }
        let body = serde_json::json!({
            "error": { "code": "not_authorized", "message": "publishing to this topic is not allowed" },
            "topic": topic,
        });
        let error_topic = format!("{}error", topics::downlink_prefix(&self.accepted.user_text));
        let payload = Bytes::from(body.to_string());
        let offered = downlink::Offered::plain(&error_topic, &payload, 0);
        downlink::offer(&self.accepted.session, &self.shared.stats, self.shared.settings.max_queued, &offered, false);
    }

    /// After a resumed session: everything unacknowledged goes again, marked DUP.
    fn resend_inflight(&mut self) {
        let pending: Vec<_> = self.accepted.session.state().inflight.iter().cloned().collect();
        for i in pending {
            if i.released {
                self.send(Outbound::PubRel(i.pkid));
            } else {
                self.write_delivery(i.delivery, i.pkid, true);
            }
        }
    }

    /// Writes one message for the device.
    fn write_delivery(&mut self, d: Delivery, pkid: u16, dup: bool) {
        let (topic, topic_alias) = self.alias_out(d.topic);
        let publish = Publish {
            topic,
            payload: d.payload,
            qos: d.qos,
            retain: d.retain,
            dup,
            pkid,
            topic_alias,
            subscription_ids: d.subscription_ids,
            properties: d.properties,
        };
        codec::write(self.accepted.protocol, Outbound::Publish(publish), &mut self.wbuf);
    }

    /// The topic to write for a message to the device, using topic aliases when the
    /// v5 device accepts them: the first message on a topic carries the topic and a
    /// new alias, later ones only the alias.
    fn alias_out(&mut self, topic: String) -> (String, Option<u16>) {
        let max = self.accepted.topic_alias_max.min(TOPIC_ALIAS_MAX);
        if max == 0 {
            return (topic, None);
        }
        if let Some(&alias) = self.aliases_out.get(&topic) {
            return (String::new(), Some(alias));
        }
        let next = self.aliases_out.len() as u16 + 1;
        if next > max {
            return (topic, None);
        }
        self.aliases_out.insert(topic.clone(), next);
        (topic, Some(next))
    }

    /// Moves queued messages into the write buffer while the in-flight window allows.
    fn drain(&mut self) {
        let window = self.accepted.outbound_window;
        let max_packet = self.accepted.outbound_max_packet.map(|m| m as usize);
        let session = self.accepted.session.clone();
        let mut st = session.state();
        while let Some(front) = st.queue.front() {
            if front.qos > 0 && st.inflight.len() >= window {
                break;
            }
            let Some(mut d) = st.queue.pop_front() else { break };
            if !d.still_valid() {
                GateStats::bump(&self.shared.stats.deliveries_dropped);
                continue;
            }
            // v5 devices may announce a maximum packet size; larger messages are dropped.
            if max_packet.is_some_and(|m| d.topic.len() + d.payload.len() + 16 > m) {
                GateStats::bump(&self.shared.stats.deliveries_dropped);
                continue;
            }
            let pkid = if d.qos > 0 {
                let pkid = st.next_pkid();
                st.inflight.push_back(Inflight { pkid, delivery: d.clone(), released: false });
                pkid
            } else {
                0
            };
            self.write_delivery(d, pkid, false);
        }
    }

    /// Tells a v5 device why it is closed, publishes the will when due, and
    /// releases the session.
    async fn finish(&mut self, end: End) {
        if let End::Closed(reason) = end {
            // Acknowledgements already written go out first (3.1.1 has no DISCONNECT to add).
            if self.accepted.protocol == Protocol::V5 {
                self.send(Outbound::Disconnect(reason));
            }
            let _ = self.flush().await;
        }
        let will_due = match end {
            End::Disconnected { with_will } => with_will,
            End::Lost => true,
            End::Closed(reason) => reason != CloseReason::ShuttingDown,
        };
        let will = self.accepted.will.take().filter(|_| will_due);
        self.transport.close().await;
        self.shared.registry.detach(&self.accepted.session, self.id);
        if let Some(will) = will {
            self.publish_will(will);
        }
        report_presence(&self.shared, self.accepted.user).await;
        tracing::info!(?end, "device disconnected");
    }
}

impl Connection {
    /// Publishes the will now, or after its v5 Will Delay Interval unless the device
    /// resumes its session first. The delay never outlasts the session: a session
    /// that ends with its connection publishes at once (MQTT 5 §3.1.3.2.2).
    fn publish_will(&self, will: codec::Will) {
        let uplinks = self.shared.uplinks.clone();
        let session_expiry = self.accepted.session.state().expiry.unwrap_or(Duration::ZERO);
        let delay = Duration::from_secs(u64::from(will.delay)).min(session_expiry);
        let qos = if will.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let (topic, payload) = if self.shared.namespace.as_ref().is_some_and(|ns| ns.contains(&will.topic)) {
            let publish = Publish {
                topic: will.topic,
                payload: will.payload,
                qos: will.qos,
                retain: will.retain,
                dup: false,
                pkid: 0,
                topic_alias: None,
                subscription_ids: Vec::new(),
                properties: will.properties,
            };
            Namespace::envelope(&namespace::session_key(&self.accepted.session), &publish)
        } else {
            (will.topic, will.payload)
        };
        let publish = move || {
            if let Err(e) = uplinks.try_send(topic, qos, payload) {
                tracing::warn!(error = %e, "will could not be published");
            }
        };
        if delay.is_zero() {
            publish();
            return;
        }
        let session = self.accepted.session.clone();
        let connection = self.id;
        tokio::spawn(
            async move {
                tokio::time::sleep(delay).await;
                // Resumed (or taken over) in the meantime: the will is cancelled.
                let resumed = session.state().owner.is_some_and(|owner| owner != connection);
                if resumed {
                    tracing::debug!("session resumed before the will delay; will dropped");
                } else {
                    publish();
                }
            }
            .in_current_span(),
        );
    }
}

/// Tells the bridges how many devices of `user` this gate holds now.
async fn report_presence(shared: &Shared, user: UserId) {
    if user == namespace::ANONYMOUS {
        return;
    }
    let (devices, seq) = shared.presence_seq.stamp(|| shared.registry.connected_devices(user) as i64);
    let report = GatePresence { reset: false, user_id: Some(user), devices, seq };
    let topic = topics::gate_presence(&shared.settings.node_id);
    let payload = serde_json::to_vec(&report).unwrap_or_default().into();
    if let Err(e) = shared.uplinks.send(topic, QoS::AtLeastOnce, payload).await {
        tracing::warn!(error = %e, "presence report not handed to the bus");
    }
}
