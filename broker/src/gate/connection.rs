//! One device connection: CONNECT and authentication, then the packet loop
//! (publish, subscribe, acknowledgements, keepalive) until the device leaves, is
//! pushed out by a takeover, breaks the protocol, or the gate shuts down.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parley_domain::Grant;
use parley_wire::payloads::GatePresence;
use parley_wire::{topics, DeviceRights, UserId};
use rumqttc::QoS;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::acl::{self, Verdict};
use super::codec::{
    self, AckReason, CloseReason, ConnAckProps, ConnectInfo, DecodeError, Inbound, Outbound, Protocol, Publish,
    Refusal, SubResult,
};
use super::downlink;
use super::session::{GateStats, Session, Subscription};
use super::Shared;

/// Longest client id accepted, in bytes.
const MAX_CLIENT_ID_LEN: usize = 256;

/// Serves one accepted TCP connection to its end.
pub async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let mut rbuf = BytesMut::with_capacity(1024);
    let connect = match timeout(shared.settings.connect_timeout, read_connect(&shared, &mut stream, &mut rbuf)).await {
        Ok(Ok(c)) => c,
        Ok(Err(reason)) => {
            tracing::debug!(%peer, reason, "connection closed before CONNECT completed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT in time; closed");
            return;
        }
    };
    let protocol = connect.protocol;
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let accepted = match authorize(&shared, connect, id).await {
        Ok(a) => a,
        Err(refusal) => {
            GateStats::bump(&shared.stats.connections_refused);
            tracing::info!(%peer, ?refusal, "CONNECT refused");
            let mut out = BytesMut::new();
            codec::write(
                protocol,
                Outbound::ConnAck { session_present: false, refusal: Some(refusal), props: ConnAckProps::default() },
                &mut out,
            );
            let _ = timeout(shared.settings.write_timeout, stream.write_all(&out)).await;
            return;
        }
    };
    GateStats::bump(&shared.stats.connections_accepted);
    let span = tracing::info_span!("device", user_id = %accepted.user, client_id = %accepted.session.client_id, %peer);
    async move {
        tracing::info!(protocol = ?protocol, present = accepted.present, "device connected");
        report_presence(&shared, accepted.user).await;
        let mut conn = Connection { shared, stream, rbuf, wbuf: BytesMut::with_capacity(1024), accepted, id };
        let end = conn.run(shutdown).await;
        conn.finish(end).await;
    }
    .instrument(span)
    .await
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
    keep_alive: u16,
    will: Option<codec::Will>,
    outbound_window: usize,
    outbound_max_packet: Option<u32>,
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
    stream: &mut TcpStream,
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
                let _ = stream.write_all(&out).await;
                return Err("unsupported protocol version");
            }
            Err(e) => {
                GateStats::bump(&shared.stats.malformed_packets);
                tracing::debug!(error = %e, "bad first packet");
                return Err("first packet malformed, too large or not CONNECT");
            }
        }
        match stream.read_buf(rbuf).await {
            Ok(0) | Err(_) => return Err("closed"),
            Ok(_) => {}
        }
    }
}

/// Checks credentials (the token, and that its sign-in is live) and the will, then
/// attaches the session.
async fn authorize(shared: &Shared, c: ConnectInfo, connection: u64) -> Result<Accepted, Refusal> {
    let (Some(username), Some(password)) = (c.username, c.password) else {
        return Err(Refusal::BadCredentials);
    };
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
    let token_expires = Instant::now() + Duration::from_secs(left);
    if let Some(will) = &c.will {
        if acl::publish_as(&username, rights, &will.topic) != Verdict::Allowed {
            return Err(Refusal::NotAuthorized);
        }
    }
    if c.client_id.len() > MAX_CLIENT_ID_LEN || (c.client_id.is_empty() && !c.clean_start && c.protocol == Protocol::V4)
    {
        return Err(Refusal::BadClientId);
    }
    let assigned_client_id = c.client_id.is_empty().then(|| format!("auto-{}", uuid::Uuid::new_v4().simple()));
    let client_id = assigned_client_id.clone().unwrap_or(c.client_id);
    let limit = shared.settings.session_expiry;
    let expiry = match c.protocol {
        Protocol::V4 => (!c.clean_start).then_some(limit),
        Protocol::V5 => c.session_expiry.map(|s| Duration::from_secs(u64::from(s)).min(limit)).filter(|d| !d.is_zero()),
    };
    let attached = shared
        .registry
        .attach(user, &client_id, connection, sign_in, c.clean_start, expiry, shared.settings.max_sessions_per_user)
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
        keep_alive: c.keep_alive,
        will: c.will,
        outbound_window: window,
        outbound_max_packet: c.max_packet_size,
    })
}

struct Connection {
    shared: Arc<Shared>,
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    accepted: Accepted,
    id: u64,
}

impl Connection {
    fn send(&mut self, packet: Outbound) {
        codec::write(self.accepted.protocol, packet, &mut self.wbuf);
    }

    async fn flush(&mut self) -> Result<(), ()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let out = self.wbuf.split();
        match timeout(self.shared.settings.write_timeout, self.stream.write_all(&out)).await {
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
        let keep_alive = match self.accepted.keep_alive {
            0 => None,
            secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
        };
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        let session = self.accepted.session.clone();
        loop {
            let idle = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
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
                read = self.stream.read_buf(&mut self.rbuf) => match read {
                    Ok(0) | Err(_) => Some(End::Lost),
                    Ok(_) => {
                        deadline = keep_alive.map(|k| Instant::now() + k);
                        self.handle_input().await
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

    /// Handles every complete packet in the read buffer.
    async fn handle_input(&mut self) -> Option<End> {
        loop {
            let packet = match codec::read(self.accepted.protocol, &mut self.rbuf, self.shared.settings.max_packet_size)
            {
                Ok(p) => p,
                Err(DecodeError::Incomplete) => return None,
                Err(DecodeError::TooLarge(n)) => {
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
            Inbound::PubAck(pkid) => {
                let mut st = self.accepted.session.state();
                if let Some(pos) = st.inflight.iter().position(|(id, _)| *id == pkid) {
                    st.inflight.remove(pos);
                }
                drop(st);
                self.drain();
            }
            Inbound::PubRel(pkid) => {
                self.accepted.session.state().incoming_qos2.remove(&pkid);
                self.send(Outbound::PubComp(pkid));
            }
            // The gate never sends QoS 2, so these can only be stray; ignore them.
            Inbound::PubRec(_) | Inbound::PubComp(_) => {}
            Inbound::Subscribe { pkid, filters } => self.subscribe(pkid, filters),
            Inbound::Unsubscribe { pkid, filters } => {
                let count = filters.len();
                self.accepted.session.state().subscriptions.retain(|s| !filters.contains(&s.filter));
                self.send(Outbound::UnsubAck { pkid, count });
            }
            Inbound::PingReq => self.send(Outbound::PingResp),
            Inbound::Disconnect { with_will } => return Some(End::Disconnected { with_will }),
            Inbound::ProtocolViolation(what) => {
                tracing::warn!(what, "protocol violation; closing");
                return Some(End::Closed(CloseReason::ProtocolError));
            }
        }
        None
    }

    async fn publish(&mut self, p: Publish) -> Option<End> {
        let v5 = self.accepted.protocol == Protocol::V5;
        if p.topic_alias {
            return Some(End::Closed(CloseReason::TopicAliasInvalid));
        }
        if p.retain && v5 {
            return Some(End::Closed(CloseReason::RetainNotSupported));
        }
        if p.qos == 2 && v5 {
            return Some(End::Closed(CloseReason::QoSNotSupported));
        }
        match acl::publish_as(&self.accepted.user_text, self.accepted.rights, &p.topic) {
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
        let duplicate = p.qos == 2 && !self.accepted.session.state().incoming_qos2.insert(p.pkid);
        if !duplicate {
            // QoS 0 stays QoS 0 (typing and the like); 1 and 2 travel the bus at QoS 1.
            // Waiting here pushes back on a fast device.
            let qos = if p.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            if let Err(e) = self.shared.bus.publish(p.topic, qos, false, p.payload).await {
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

    fn subscribe(&mut self, pkid: u16, filters: Vec<(String, u8)>) {
        let max = self.shared.settings.max_subscriptions;
        let mut st = self.accepted.session.state();
        let mut results = Vec::with_capacity(filters.len());
        for (filter, qos) in filters {
            let result = match acl::subscribe(&self.accepted.user_text, &filter) {
                Verdict::Invalid => SubResult::FilterInvalid,
                Verdict::NotAuthorized => SubResult::NotAuthorized,
                Verdict::Allowed => {
                    let granted = qos.min(1);
                    if let Some(existing) = st.subscriptions.iter_mut().find(|s| s.filter == filter) {
                        existing.qos = granted;
                        SubResult::Granted(granted)
                    } else if st.subscriptions.len() >= max {
                        SubResult::QuotaExceeded
                    } else {
                        st.subscriptions.push(Subscription { filter: filter.clone(), qos: granted });
                        SubResult::Granted(granted)
                    }
                }
            };
            if !matches!(result, SubResult::Granted(_)) {
                GateStats::bump(&self.shared.stats.subscriptions_refused);
                tracing::warn!(%filter, ?result, "subscription refused");
            }
            results.push(result);
        }
        drop(st);
        self.send(Outbound::SubAck { pkid, results });
    }

    /// Tells the device, on `to/{uid}/error`, which topic it may not publish to.
    fn report_refusal(&self, topic: &str) {
        let body = serde_json::json!({
            "error": { "code": "not_authorized", "message": "publishing to this topic is not allowed" },
            "topic": topic,
        });
        let error_topic = format!("{}error", topics::downlink_prefix(&self.accepted.user_text));
        downlink::offer(
            &self.accepted.session,
            &self.shared.stats,
            self.shared.settings.max_queued,
            &error_topic,
            Bytes::from(body.to_string()),
            0,
        );
    }

    /// After a resumed session: everything unacknowledged goes again, marked DUP.
    fn resend_inflight(&mut self) {
        let pending: Vec<_> = self.accepted.session.state().inflight.iter().cloned().collect();
        for (pkid, d) in pending {
            self.send(Outbound::Publish(Publish {
                topic: d.topic,
                payload: d.payload,
                qos: d.qos,
                retain: false,
                dup: true,
                pkid,
                topic_alias: false,
            }));
        }
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
            let Some(d) = st.queue.pop_front() else { break };
            // v5 devices may announce a maximum packet size; larger messages are dropped.
            if max_packet.is_some_and(|m| d.topic.len() + d.payload.len() + 16 > m) {
                GateStats::bump(&self.shared.stats.deliveries_dropped);
                continue;
            }
            let pkid = if d.qos > 0 {
                let id = st.next_pkid();
                st.inflight.push_back((id, d.clone()));
                id
            } else {
                0
            };
            codec::write(
                self.accepted.protocol,
                Outbound::Publish(Publish {
                    topic: d.topic,
                    payload: d.payload,
                    qos: d.qos,
                    retain: false,
                    dup: false,
                    pkid,
                    topic_alias: false,
                }),
                &mut self.wbuf,
            );
        }
    }

    /// Tells a v5 device why it is closed, publishes the will when due, and
    /// releases the session.
    async fn finish(&mut self, end: End) {
        if let End::Closed(reason) = end {
            if self.accepted.protocol == Protocol::V5 {
                self.send(Outbound::Disconnect(reason));
                let _ = self.flush().await;
            }
        }
        let will_due = match end {
            End::Disconnected { with_will } => with_will,
            End::Lost => true,
            End::Closed(reason) => reason != CloseReason::ShuttingDown,
        };
        if let Some(will) = self.accepted.will.take().filter(|_| will_due) {
            if let Err(e) = self.shared.bus.try_publish(will.topic, QoS::AtLeastOnce, false, will.payload) {
                tracing::warn!(error = %e, "will could not be published");
            }
        }
        let _ = self.stream.shutdown().await;
        self.shared.registry.detach(&self.accepted.session, self.id);
        report_presence(&self.shared, self.accepted.user).await;
        tracing::info!(?end, "device disconnected");
    }
}

/// Tells the bridges how many devices of `user` this gate holds now.
async fn report_presence(shared: &Shared, user: UserId) {
    let report =
        GatePresence { reset: false, user_id: Some(user), devices: shared.registry.connected_devices(user) as i64 };
    let topic = topics::gate_presence(&shared.settings.node_id);
    let payload = serde_json::to_vec(&report).unwrap_or_default();
    if let Err(e) = shared.bus.publish(topic, QoS::AtLeastOnce, false, payload).await {
        tracing::warn!(error = %e, "presence report not handed to the bus");
    }
}
