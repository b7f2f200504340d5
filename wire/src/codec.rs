//! MQTT 3.1.1 and 5 packets as the gate sees them, whichever version a device
//! speaks. Decoding and encoding are rumqttc's codecs; this module chooses the
//! version from the CONNECT's protocol level, maps to one set of types, and mends
//! the few places where rumqttc's parsers and the standard disagree.
//!
//! The client side (`write_connect`, `write_inbound`) is here too, for tests, the
//! fuzz target (`wire/fuzz`) and load generators.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as m4base, v4};
use rumqttc::v5::mqttbytes::{self as m5base, v5};

/// The protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

/// A last will, published by the gate if the connection ends without DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// v5 Will Delay Interval, in seconds (0: at once).
    pub delay: u32,
    pub retain: bool,
    /// The will's other v5 properties, as its PUBLISH will carry them.
    pub properties: Option<Box<v5::PublishProperties>>,
}

/// A CONNECT, reduced to what the gate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    pub protocol: Protocol,
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub will: Option<Will>,
    /// v5 Session Expiry Interval, in seconds.
    pub session_expiry: Option<u32>,
    /// v5 Receive Maximum: QoS 1/2 messages the device accepts unacknowledged.
    pub receive_maximum: Option<u16>,
    /// v5 Maximum Packet Size the device accepts.
    pub max_packet_size: Option<u32>,
    /// v5 Topic Alias Maximum: aliases the device accepts from the gate.
    pub topic_alias_max: u16,
}

/// A PUBLISH in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pkid: u16,
    /// v5 Topic Alias (with an empty topic: the topic the alias stands for).
    pub topic_alias: Option<u16>,
    /// v5 Subscription Identifiers of the subscriptions that matched (gate to device).
    pub subscription_ids: Vec<usize>,
    /// The other v5 properties (user properties, content type, response topic…), carried
    /// unchanged through the open namespace; never with a topic alias or subscription ids.
    pub properties: Option<Box<v5::PublishProperties>>,
}

/// One filter of a SUBSCRIBE, with its v5 options (3.1.1: the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained messages at subscribe; 1: only for a new subscription; 2: never.
    pub retain_handling: u8,
}

impl SubscribeFilter {
    /// A filter with 3.1.1's (and v5's default) options.
    pub fn new(filter: impl Into<String>, qos: u8) -> Self {
        Self { filter: filter.into(), qos, no_local: false, retain_as_published: false, retain_handling: 0 }
    }
}

/// A packet from a connected device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubscribeFilter>,
        /// v5 Subscription Identifier.
        id: Option<usize>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    /// `with_will`: v5 reason 0x04 asks for the will to be published anyway.
    Disconnect {
        with_will: bool,
        /// v5: a new Session Expiry Interval for the session, in seconds.
        session_expiry: Option<u32>,
    },
    /// A second CONNECT, or a packet only a server sends: a protocol violation.
    ProtocolViolation(&'static str),
}

/// Why a CONNECT was refused; each maps to the version's CONNACK code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnsupportedVersion,
    BadClientId,
    BadCredentials,
    NotAuthorized,
    ServerUnavailable,
    QuotaExceeded,
    /// Too many new connections from the device's address (3.1.1: server unavailable).
    ConnectionRate,
    /// The client reconnected in a tight loop and is banned for a while (3.1.1: server unavailable).
    Banned,
}

/// Why a connection is being closed by the gate (v5 sends it as a DISCONNECT reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Malformed,
    ProtocolError,
    NotAuthorized,
    ShuttingDown,
    KeepAliveTimeout,
    SessionTakenOver,
    TopicNameInvalid,
    PacketTooLarge,
    ReceiveMaximumExceeded,
    TopicAliasInvalid,
    RetainNotSupported,
    QoSNotSupported,
    /// The access token the device connected with has expired (v5: 0xA0, maximum connect time).
    TokenExpired,
    /// The device's sign-in was revoked (v5: 0x87, not authorized).
    SessionRevoked,
}

/// Answer to one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubResult {
    Granted(u8),
    NotAuthorized,
    FilterInvalid,
    QuotaExceeded,
}

/// Reason in a PUBACK or PUBREC (v5; 3.1.1 acknowledgements carry none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckReason {
    Success,
    NotAuthorized,
    TopicNameInvalid,
    PacketIdInUse,
}

/// A packet the gate sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    ConnAck { session_present: bool, refusal: Option<Refusal>, props: ConnAckProps },
    Publish(Publish),
    PubAck { pkid: u16, reason: AckReason },
    PubRec { pkid: u16, reason: AckReason },
    PubRel(u16),
    PubComp(u16),
    SubAck { pkid: u16, results: Vec<SubResult> },
    UnsubAck { pkid: u16, count: usize },
    PingResp,
    Disconnect(CloseReason),
}

/// What a v5 CONNACK tells the device about this server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAckProps {
    pub assigned_client_id: Option<String>,
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub max_packet_size: Option<u32>,
    /// The keepalive the device must use instead of the one it asked for.
    pub server_keep_alive: Option<u16>,
    /// Aliases the gate accepts from the device.
    pub topic_alias_max: Option<u16>,
    /// Whether retained messages are available (only in an open namespace).
    pub retain_available: bool,
    /// Whether devices may make shared subscriptions (only in an open namespace).
    pub shared_subscriptions_available: bool,
}

/// A decoding failure; `Incomplete` only means "read more bytes".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("need more bytes")]
    Incomplete,
    #[error("packet of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("malformed packet: {0}")]
    Malformed(String),
}

fn frame(buf: &BytesMut, max: usize) -> Result<m4base::FixedHeader, DecodeError> {
    match m4base::check(buf.iter(), max) {
        Ok(h) => Ok(h),
        Err(m4base::Error::InsufficientBytes(_)) => Err(DecodeError::Incomplete),
        Err(m4base::Error::PayloadSizeLimitExceeded(n)) => Err(DecodeError::TooLarge(n)),
        Err(e) => Err(DecodeError::Malformed(e.to_string())),
    }
}

/// Whether `buf` starts with a whole packet (whatever its size).
pub fn complete(buf: &BytesMut) -> bool {
    m4base::check(buf.iter(), usize::MAX).is_ok()
}

/// Reads the first packet of a connection, which must be a CONNECT.
pub fn read_connect(buf: &mut BytesMut, max: usize) -> Result<ConnectInfo, DecodeError> {
    let header = frame(buf, max)?;
    if buf[0] >> 4 != 1 {
        return Err(DecodeError::NotConnect);
    }
    // The remaining length takes bytes 1.. until one without the continuation bit.
    let header_len = 1 + buf[1..].iter().position(|b| b & 0x80 == 0).map_or(1, |i| i + 1);
    // Variable header: protocol name (2-byte length + bytes), then the level byte.
    let body = &buf[header_len..header.frame_length()];
    let name_len = body.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
    let level = name_len.and_then(|n| body.get(2 + n)).copied();
    match level {
        Some(4) => match v4::Packet::read(buf, max) {
            Ok(v4::Packet::Connect(c)) => Ok(from_v4_connect(c)),
            Ok(_) => Err(DecodeError::NotConnect),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
        Some(5) => match v5::Packet::read(buf, Some(max as u32)) {
            Ok(v5::Packet::Connect(c, will, login)) => Ok(from_v5_connect(c, will, login)?),
            Ok(_) => Err(DecodeError::NotConnect),
            Err(e) => Err(DecodeError::Malformed(e.to_string())),
        },
        Some(other) => {
            let _ = buf.split_to(header.frame_length());
            Err(DecodeError::UnsupportedVersion(other))
        }
        None => Err(DecodeError::Malformed("CONNECT without protocol level".into())),
    }
}

fn from_v4_connect(c: v4::Connect) -> ConnectInfo {
    let (username, password) = match c.login {
        Some(l) => (non_empty(l.username), non_empty(l.password)),
        None => (None, None),
    };
    ConnectInfo {
        protocol: Protocol::V4,
        client_id: c.client_id,
        clean_start: c.clean_session,
        keep_alive: c.keep_alive,
        username,
        password,
        will: c.last_will.map(|w| Will {
            topic: w.topic,
            payload: w.message,
            qos: w.qos as u8,
            delay: 0,
            retain: w.retain,
            properties: None,
        }),
        session_expiry: None,
        receive_maximum: None,
        max_packet_size: None,
        topic_alias_max: 0,
    }
}

fn from_v5_connect(
    c: v5::Connect,
    will: Option<v5::LastWill>,
    login: Option<v5::Login>,
) -> Result<ConnectInfo, DecodeError> {
    let (username, password) = match login {
        Some(l) => (non_empty(l.username), non_empty(l.password)),
        None => (None, None),
    };
    let will = match will {
        Some(w) => Some(Will {
            topic: String::from_utf8(w.topic.to_vec())
                .map_err(|_| DecodeError::Malformed("will topic is not UTF-8".into()))?,
            payload: w.message,
            qos: w.qos as u8,
            retain: w.retain,
            delay: w.properties.as_ref().and_then(|p| p.delay_interval).unwrap_or(0),
            properties: w.properties.and_then(will_publish_properties),
        }),
        None => None,
    };
    let props = c.properties.unwrap_or_default();
    Ok(ConnectInfo {
        protocol: Protocol::V5,
        client_id: c.client_id,
        clean_start: c.clean_start,
        keep_alive: c.keep_alive,
        username,
        password,
        will,
        session_expiry: props.session_expiry_interval,
        receive_maximum: props.receive_maximum,
        max_packet_size: props.max_packet_size,
        topic_alias_max: props.topic_alias_max.unwrap_or(0),
    })
}

/// A will's properties as its PUBLISH carries them (the delay is the gate's business).
fn will_publish_properties(w: v5::LastWillProperties) -> Option<Box<v5::PublishProperties>> {
    let p = v5::PublishProperties {
        payload_format_indicator: w.payload_format_indicator,
        message_expiry_interval: w.message_expiry_interval,
        content_type: w.content_type,
        response_topic: w.response_topic,
        correlation_data: w.correlation_data,
        user_properties: w.user_properties,
        ..Default::default()
    };
    (p != v5::PublishProperties::default()).then(|| Box::new(p))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Reads the next packet after CONNECT.
pub fn read(protocol: Protocol, buf: &mut BytesMut, max: usize) -> Result<Inbound, DecodeError> {
    let header = frame(buf, max)?;
    if protocol == Protocol::V5 && buf[0] == 0xE0 && header.frame_length() <= 3 {
        // A v5 DISCONNECT may omit its properties, or its reason too (then 0x00, normal):
        // what most clients send, and what rumqttc's parser refuses (MQTT 5 §3.14.2).
        let with_will = header.frame_length() == 3 && buf[2] == 0x04;
        let _ = buf.split_to(header.frame_length());
        return Ok(Inbound::Disconnect { with_will, session_expiry: None });
    }
    match protocol {
        Protocol::V4 => v4::Packet::read(buf, max).map_err(|e| DecodeError::Malformed(e.to_string())).map(from_v4),
        Protocol::V5 => {
            v5::Packet::read(buf, Some(max as u32)).map_err(|e| DecodeError::Malformed(e.to_string())).and_then(from_v5)
        }
    }
}

fn from_v4(p: v4::Packet) -> Inbound {
    use v4::Packet as P;
    match p {
        P::Publish(p) => Inbound::Publish(Publish {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
            topic_alias: None,
            subscription_ids: Vec::new(),
            properties: None,
        }),
        P::PubAck(a) => Inbound::PubAck(a.pkid),
        P::PubRec(a) => Inbound::PubRec(a.pkid),
        P::PubRel(a) => Inbound::PubRel(a.pkid),
        P::PubComp(a) => Inbound::PubComp(a.pkid),
        P::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s.filters.into_iter().map(|f| SubscribeFilter::new(f.path, f.qos as u8)).collect(),
            id: None,
        },
        P::Unsubscribe(u) => Inbound::Unsubscribe { pkid: u.pkid, filters: u.topics },
        P::PingReq => Inbound::PingReq,
        P::Disconnect => Inbound::Disconnect { with_will: false, session_expiry: None },
        P::Connect(_) => Inbound::ProtocolViolation("second CONNECT"),
        P::ConnAck(_) | P::SubAck(_) | P::UnsubAck(_) | P::PingResp => {
            Inbound::ProtocolViolation("server-only packet from a client")
        }
    }
}

fn from_v5(p: v5::Packet) -> Result<Inbound, DecodeError> {
    use v5::Packet as P;
    Ok(match p {
        P::Publish(p) => {
            let (topic_alias, properties) = match p.properties {
                Some(pr) if !pr.subscription_identifiers.is_empty() => {
                    // MQTT-3.3.4-6 (and rumqttc miscounts these properties when reading).
                    return Ok(Inbound::ProtocolViolation("subscription identifier in a PUBLISH from a client"));
                }
                Some(mut pr) => {
                    let alias = pr.topic_alias.take();
                    (alias, (pr != v5::PublishProperties::default()).then(|| Box::new(pr)))
                }
                None => (None, None),
            };
            Inbound::Publish(Publish {
                topic: String::from_utf8(p.topic.to_vec())
                    .map_err(|_| DecodeError::Malformed("topic is not UTF-8".into()))?,
                payload: p.payload,
                qos: p.qos as u8,
                retain: p.retain,
                dup: p.dup,
                pkid: p.pkid,
                topic_alias,
                subscription_ids: Vec::new(),
                properties,
            })
        }
        P::PubAck(a) => Inbound::PubAck(a.pkid),
        P::PubRec(a) => Inbound::PubRec(a.pkid),
        P::PubRel(a) => Inbound::PubRel(a.pkid),
        P::PubComp(a) => Inbound::PubComp(a.pkid),
        P::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            id: s.properties.and_then(|p| p.id),
            filters: s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                })
                .collect(),
        },
        P::Unsubscribe(u) => Inbound::Unsubscribe { pkid: u.pkid, filters: u.filters },
        P::PingReq(_) => Inbound::PingReq,
        P::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        P::Connect(..) => Inbound::ProtocolViolation("second CONNECT"),
        P::Auth(_) => Inbound::ProtocolViolation("AUTH is not supported"),
        P::ConnAck(_) | P::SubAck(_) | P::UnsubAck(_) | P::PingResp(_) => {
            Inbound::ProtocolViolation("server-only packet from a client")
        }
    })
}

/// Appends the encoding of a CONNECT (what a client sends first): for tests, the
/// fuzz corpus and load generators.
pub fn write_connect(c: &ConnectInfo, out: &mut BytesMut) {
    let login = |u: &Option<String>, p: &Option<String>| {
        (u.is_some() || p.is_some()).then(|| (u.clone().unwrap_or_default(), p.clone().unwrap_or_default()))
    };
    match c.protocol {
        Protocol::V4 => {
            let mut connect = v4::Connect::new(c.client_id.clone());
            connect.keep_alive = c.keep_alive;
            connect.clean_session = c.clean_start;
            if let Some((u, p)) = login(&c.username, &c.password) {
                connect.set_login(u, p);
            }
            connect.last_will = c.will.as_ref().map(|w| v4::LastWill {
                topic: w.topic.clone(),
                message: w.payload.clone(),
                qos: qos4(w.qos),
                retain: w.retain,
            });
            let _ = connect.write(out);
        }
        Protocol::V5 => {
            let properties = v5::ConnectProperties {
                session_expiry_interval: c.session_expiry,
                receive_maximum: c.receive_maximum,
                max_packet_size: c.max_packet_size,
                topic_alias_max: (c.topic_alias_max > 0).then_some(c.topic_alias_max),
                ..v5::ConnectProperties::new()
            };
            let connect = v5::Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id.clone(),
                clean_start: c.clean_start,
                properties: Some(properties),
            };
            let will = c.will.as_ref().map(|w| {
                let p = w.properties.as_deref().cloned().unwrap_or_default();
                let properties = (w.delay > 0 || w.properties.is_some()).then(|| v5::LastWillProperties {
                    delay_interval: (w.delay > 0).then_some(w.delay),
                    payload_format_indicator: p.payload_format_indicator,
                    message_expiry_interval: p.message_expiry_interval,
                    content_type: p.content_type,
                    response_topic: p.response_topic,
                    correlation_data: p.correlation_data,
                    user_properties: p.user_properties,
                });
                v5::LastWill::new(w.topic.clone(), w.payload.clone(), qos5(w.qos), w.retain, properties)
            });
            let login = login(&c.username, &c.password).map(|(username, password)| v5::Login { username, password });
            let _ = v5::Packet::Connect(connect, will, login).write(out, None);
        }
    }
}

/// Appends the encoding of a packet a client sends after CONNECT (the inverse of [`read`]).
pub fn write_inbound(protocol: Protocol, packet: &Inbound, out: &mut BytesMut) {
    match protocol {
        Protocol::V4 => {
            let _ = match packet.clone() {
                Inbound::Publish(p) => v4_publish(p).write(out),
                Inbound::PubAck(pkid) => v4::PubAck::new(pkid).write(out),
                Inbound::PubRec(pkid) => v4::PubRec::new(pkid).write(out),
                Inbound::PubRel(pkid) => v4::PubRel::new(pkid).write(out),
                Inbound::PubComp(pkid) => v4::PubComp::new(pkid).write(out),
                Inbound::Subscribe { pkid, filters, .. } => {
                    let filters =
                        filters.into_iter().map(|f| v4::SubscribeFilter::new(f.filter, qos4(f.qos))).collect();
                    v4::Subscribe { pkid, filters }.write(out)
                }
                Inbound::Unsubscribe { pkid, filters } => v4::Unsubscribe { pkid, topics: filters }.write(out),
                Inbound::PingReq => v4::PingReq.write(out),
                Inbound::Disconnect { .. } => v4::Disconnect.write(out),
                Inbound::ProtocolViolation(_) => Ok(0),
            };
        }
        Protocol::V5 => {
            let packet = match packet.clone() {
                Inbound::Publish(p) => v5::Packet::Publish(v5_publish(p)),
                Inbound::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
                Inbound::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(pkid, None)),
                Inbound::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
                Inbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
                Inbound::Subscribe { pkid, filters, id } => {
                    let filters = filters
                        .into_iter()
                        .map(|f| v5::Filter {
                            path: f.filter,
                            qos: qos5(f.qos),
                            nolocal: f.no_local,
                            preserve_retain: f.retain_as_published,
                            retain_forward_rule: match f.retain_handling {
                                0 => v5::RetainForwardRule::OnEverySubscribe,
                                1 => v5::RetainForwardRule::OnNewSubscribe,
                                _ => v5::RetainForwardRule::Never,
                            },
                        })
                        .collect();
                    let properties = id.map(|id| v5::SubscribeProperties { id: Some(id), user_properties: Vec::new() });
                    v5::Packet::Subscribe(v5::Subscribe { pkid, filters, properties })
                }
                Inbound::Unsubscribe { pkid, filters } => {
                    v5::Packet::Unsubscribe(v5::Unsubscribe { pkid, filters, properties: None })
                }
                Inbound::PingReq => v5::Packet::PingReq(v5::PingReq),
                // By hand: rumqttc writes a reason without properties with a stray byte.
                Inbound::Disconnect { with_will: true, session_expiry: None } => {
                    return out.extend_from_slice(&[0xE0, 0x01, 0x04])
                }
                Inbound::Disconnect { with_will: false, session_expiry: None } => {
                    return out.extend_from_slice(&[0xE0, 0x00])
                }
                Inbound::Disconnect { with_will, session_expiry: Some(secs) } => {
                    v5::Packet::Disconnect(v5::Disconnect {
                        reason_code: if with_will {
                            v5::DisconnectReasonCode::DisconnectWithWillMessage
                        } else {
                            v5::DisconnectReasonCode::NormalDisconnection
                        },
                        properties: Some(v5::DisconnectProperties {
                            session_expiry_interval: Some(secs),
                            reason_string: None,
                            user_properties: Vec::new(),
                            server_reference: None,
                        }),
                    })
                }
                Inbound::ProtocolViolation(_) => return,
            };
            let _ = packet.write(out, None);
        }
    }
}

/// Appends the encoding of `packet` to `out`. A 3.1.1 connection gets no
/// DISCONNECT (the version has none from server to client): the caller just closes.
pub fn write(protocol: Protocol, packet: Outbound, out: &mut BytesMut) {
    // Encoding our own well-formed packets into a growable buffer does not fail.
    match protocol {
        Protocol::V4 => {
            let _ = write_v4(packet, out);
        }
        Protocol::V5 => {
            let _ = write_v5(packet, out);
        }
    }
}

fn qos4(q: u8) -> m4base::QoS {
    match q {
        0 => m4base::QoS::AtMostOnce,
        1 => m4base::QoS::AtLeastOnce,
        _ => m4base::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> m5base::QoS {
    match q {
        0 => m5base::QoS::AtMostOnce,
        1 => m5base::QoS::AtLeastOnce,
        _ => m5base::QoS::ExactlyOnce,
    }
}

fn v4_publish(p: Publish) -> v4::Publish {
    let mut publish = v4::Publish::from_bytes(p.topic, qos4(p.qos), p.payload);
    publish.pkid = p.pkid;
    publish.dup = p.dup;
    publish.retain = p.retain;
    publish
}

fn v5_publish(p: Publish) -> v5::Publish {
    let properties = (p.topic_alias.is_some() || !p.subscription_ids.is_empty() || p.properties.is_some()).then(|| {
        v5::PublishProperties {
            topic_alias: p.topic_alias,
            subscription_identifiers: p.subscription_ids,
            ..p.properties.map(|b| *b).unwrap_or_default()
        }
    });
    let mut publish = v5::Publish::new(p.topic, qos5(p.qos), p.payload, properties);
    publish.pkid = p.pkid;
    publish.dup = p.dup;
    publish.retain = p.retain;
    publish
}

fn write_v4(packet: Outbound, out: &mut BytesMut) -> Result<usize, m4base::Error> {
    use v4::ConnectReturnCode as C;
    match packet {
        Outbound::ConnAck { session_present, refusal, .. } => {
            let code = match refusal {
                None => C::Success,
                Some(Refusal::UnsupportedVersion) => C::RefusedProtocolVersion,
                Some(Refusal::BadClientId) => C::BadClientId,
                Some(Refusal::BadCredentials) => C::BadUserNamePassword,
                Some(Refusal::NotAuthorized) => C::NotAuthorized,
                Some(
                    Refusal::ServerUnavailable | Refusal::QuotaExceeded | Refusal::ConnectionRate | Refusal::Banned,
                ) => C::ServiceUnavailable,
            };
            v4::ConnAck::new(code, session_present && refusal.is_none()).write(out)
        }
        Outbound::Publish(p) => v4_publish(p).write(out),
        Outbound::PubAck { pkid, .. } => v4::PubAck::new(pkid).write(out),
        Outbound::PubRec { pkid, .. } => v4::PubRec::new(pkid).write(out),
        Outbound::PubRel(pkid) => v4::PubRel::new(pkid).write(out),
        Outbound::PubComp(pkid) => v4::PubComp::new(pkid).write(out),
        Outbound::SubAck { pkid, results } => {
            let codes = results
                .into_iter()
                .map(|r| match r {
                    SubResult::Granted(q) => v4::SubscribeReasonCode::Success(qos4(q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect();
            v4::SubAck::new(pkid, codes).write(out)
        }
        Outbound::UnsubAck { pkid, .. } => v4::UnsubAck::new(pkid).write(out),
        Outbound::PingResp => v4::PingResp.write(out),
        Outbound::Disconnect(_) => Ok(0),
    }
}

fn write_v5(packet: Outbound, out: &mut BytesMut) -> Result<usize, m5base::Error> {
    use v5::ConnectReturnCode as C;
    match packet {
        Outbound::ConnAck { session_present, refusal, props } => {
            let code = match refusal {
                None => C::Success,
                Some(Refusal::UnsupportedVersion) => C::UnsupportedProtocolVersion,
                Some(Refusal::BadClientId) => C::ClientIdentifierNotValid,
                Some(Refusal::BadCredentials) => C::BadUserNamePassword,
                Some(Refusal::NotAuthorized) => C::NotAuthorized,
                Some(Refusal::ServerUnavailable) => C::ServerUnavailable,
                Some(Refusal::QuotaExceeded) => C::QuotaExceeded,
                Some(Refusal::ConnectionRate) => C::ConnectionRateExceeded,
                Some(Refusal::Banned) => C::Banned,
            };
            let properties = refusal.is_none().then(|| v5::ConnAckProperties {
                session_expiry_interval: props.session_expiry,
                receive_max: props.receive_maximum,
                // QoS 2 is available (no property); retained messages only in an open namespace.
                max_qos: None,
                retain_available: Some(u8::from(props.retain_available)),
                max_packet_size: props.max_packet_size,
                assigned_client_identifier: props.assigned_client_id,
                topic_alias_max: props.topic_alias_max,
                reason_string: None,
                user_properties: Vec::new(),
                wildcard_subscription_available: Some(1),
                subscription_identifiers_available: Some(1),
                shared_subscription_available: Some(u8::from(props.shared_subscriptions_available)),
                server_keep_alive: props.server_keep_alive,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            });
            v5::ConnAck { session_present: session_present && refusal.is_none(), code, properties }.write(out)
        }
        Outbound::Publish(p) => v5_publish(p).write(out),
        Outbound::PubAck { pkid, reason } => {
            let mut ack = v5::PubAck::new(pkid, None);
            ack.reason = match reason {
                AckReason::Success => v5::PubAckReason::Success,
                AckReason::NotAuthorized => v5::PubAckReason::NotAuthorized,
                AckReason::TopicNameInvalid => v5::PubAckReason::TopicNameInvalid,
                AckReason::PacketIdInUse => v5::PubAckReason::PacketIdentifierInUse,
            };
            ack.write(out)
        }
        Outbound::PubRec { pkid, reason } => {
            let mut rec = v5::PubRec::new(pkid, None);
            rec.reason = match reason {
                AckReason::Success => v5::PubRecReason::Success,
                AckReason::NotAuthorized => v5::PubRecReason::NotAuthorized,
                AckReason::TopicNameInvalid => v5::PubRecReason::TopicNameInvalid,
                AckReason::PacketIdInUse => v5::PubRecReason::PacketIdentifierInUse,
            };
            rec.write(out)
        }
        Outbound::PubRel(pkid) => v5::PubRel::new(pkid, None).write(out),
        Outbound::PubComp(pkid) => v5::PubComp::new(pkid, None).write(out),
        Outbound::SubAck { pkid, results } => {
            let return_codes = results
                .into_iter()
                .map(|r| match r {
                    SubResult::Granted(q) => v5::SubscribeReasonCode::Success(qos5(q)),
                    SubResult::NotAuthorized => v5::SubscribeReasonCode::NotAuthorized,
                    SubResult::FilterInvalid => v5::SubscribeReasonCode::TopicFilterInvalid,
                    SubResult::QuotaExceeded => v5::SubscribeReasonCode::QuotaExceeded,
                })
                .collect();
            v5::SubAck { pkid, return_codes, properties: None }.write(out)
        }
        Outbound::UnsubAck { pkid, count } => {
            let reasons = vec![v5::UnsubAckReason::Success; count];
            v5::UnsubAck { pkid, reasons, properties: None }.write(out)
        }
        Outbound::PingResp => v5::PingResp::write(out),
        Outbound::Disconnect(reason) => {
            use v5::DisconnectReasonCode as D;
            let code = match reason {
                CloseReason::Malformed => D::MalformedPacket,
                CloseReason::ProtocolError => D::ProtocolError,
                CloseReason::NotAuthorized => D::NotAuthorized,
                CloseReason::ShuttingDown => D::ServerShuttingDown,
                CloseReason::KeepAliveTimeout => D::KeepAliveTimeout,
                CloseReason::SessionTakenOver => D::SessionTakenOver,
                CloseReason::TopicNameInvalid => D::TopicNameInvalid,
                CloseReason::PacketTooLarge => D::PacketTooLarge,
                CloseReason::ReceiveMaximumExceeded => D::ReceiveMaximumExceeded,
                CloseReason::TopicAliasInvalid => D::TopicAliasInvalid,
                CloseReason::RetainNotSupported => D::RetainNotSupported,
                CloseReason::QoSNotSupported => D::QoSNotSupported,
                CloseReason::TokenExpired => D::MaximumConnectTime,
                CloseReason::SessionRevoked => D::NotAuthorized,
            };
            // Always with a reason string: rumqttc's encoder writes a reason code with an
            // empty property list as a bare `E0 00` (normal disconnection), losing the code.
            let reason_string = Some(close_reason_text(reason).to_string());
            let properties = v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string,
                user_properties: Vec::new(),
                server_reference: None,
            };
            v5::Disconnect { reason_code: code, properties: Some(properties) }.write(out)
        }
    }
}

/// What a v5 device reads in the DISCONNECT's reason string.
fn close_reason_text(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::Malformed => "malformed packet",
        CloseReason::ProtocolError => "protocol error",
        CloseReason::NotAuthorized => "not authorized",
        CloseReason::ShuttingDown => "server shutting down; reconnect shortly",
        CloseReason::KeepAliveTimeout => "nothing received within 1.5 times the keepalive",
        CloseReason::SessionTakenOver => "another connection took this session over",
        CloseReason::TopicNameInvalid => "topic name invalid, too long or too deep",
        CloseReason::PacketTooLarge => "packet larger than the maximum packet size",
        CloseReason::ReceiveMaximumExceeded => "more unacknowledged QoS 2 publishes than the receive maximum",
        CloseReason::TopicAliasInvalid => "topic alias invalid",
        CloseReason::RetainNotSupported => "retained messages are not allowed here",
        CloseReason::QoSNotSupported => "QoS not supported",
        CloseReason::TokenExpired => "access token expired; reconnect with a fresh one",
        CloseReason::SessionRevoked => "sign-in revoked; log in again",
    }
}

#[cfg(test)]
mod tests;
