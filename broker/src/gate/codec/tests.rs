use super::*;

fn v4_connect_bytes(client_id: &str, login: Option<(&str, &str)>) -> BytesMut {
    let mut c = v4::Connect::new(client_id);
    c.keep_alive = 30;
    c.clean_session = false;
    if let Some((u, p)) = login {
        c.set_login(u, p);
    }
    let mut buf = BytesMut::new();
    c.write(&mut buf).expect("encode");
    buf
}

#[test]
fn a_311_connect_is_read_with_its_credentials() {
    let mut buf = v4_connect_bytes("phone-1", Some(("user", "token")));
    let info = read_connect(&mut buf, 1024).expect("connect");
    assert_eq!(info.protocol, Protocol::V4);
    assert_eq!(info.client_id, "phone-1");
    assert!(!info.clean_start);
    assert_eq!(info.keep_alive, 30);
    assert_eq!(info.username.as_deref(), Some("user"));
    assert_eq!(info.password.as_deref(), Some("token"));
    assert!(buf.is_empty(), "the packet is consumed");
}

#[test]
fn a_v5_connect_is_read_with_its_properties() {
    let mut props = v5::ConnectProperties::new();
    props.session_expiry_interval = Some(600);
    props.receive_maximum = Some(5);
    let connect = v5::Connect { keep_alive: 10, client_id: "k1".into(), clean_start: true, properties: Some(props) };
    let login = Some(v5::Login::new("u", "p"));
    let mut buf = BytesMut::new();
    connect.write(&None, &login, &mut buf).expect("encode");
    let info = read_connect(&mut buf, 1024).expect("connect");
    assert_eq!(info.protocol, Protocol::V5);
    assert_eq!(info.session_expiry, Some(600));
    assert_eq!(info.receive_maximum, Some(5));
    assert_eq!(info.password.as_deref(), Some("p"));
}

#[test]
fn partial_packets_ask_for_more_bytes() {
    let full = v4_connect_bytes("phone-1", None);
    for cut in [1, 2, full.len() - 1] {
        let mut part = BytesMut::from(&full[..cut]);
        assert_eq!(read_connect(&mut part, 1024), Err(DecodeError::Incomplete), "cut at {cut}");
    }
}

#[test]
fn oversized_announced_lengths_are_refused_before_reading_the_body() {
    // PUBLISH announcing 200 MB, with no body at all.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(read(Protocol::V4, &mut buf, 1024), Err(DecodeError::TooLarge(_))));
    let mut connect = BytesMut::from(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert!(matches!(read_connect(&mut connect, 1024), Err(DecodeError::TooLarge(_))));
}

#[test]
fn first_packet_must_be_connect_of_a_known_version() {
    let mut ping = BytesMut::from(&[0xC0, 0x00][..]);
    assert_eq!(read_connect(&mut ping, 1024), Err(DecodeError::NotConnect));
    // MQTT 3.1: protocol name "MQIsdp", level 3.
    let mut v3 = BytesMut::from(&[0x10, 0x0C, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0x02, 0x00, 0x3C][..]);
    assert_eq!(read_connect(&mut v3, 1024), Err(DecodeError::UnsupportedVersion(3)));
    let mut garbage = BytesMut::from(&[0x10, 0x02, 0xFF, 0xFF][..]);
    assert!(matches!(read_connect(&mut garbage, 1024), Err(DecodeError::Malformed(_))));
}

#[test]
fn subacks_refuse_in_each_versions_terms() {
    let results = vec![SubResult::Granted(1), SubResult::NotAuthorized];
    let mut out = BytesMut::new();
    write(Protocol::V4, Outbound::SubAck { pkid: 7, results: results.clone() }, &mut out);
    assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x07, 0x01, 0x80]);
    let mut out = BytesMut::new();
    write(Protocol::V5, Outbound::SubAck { pkid: 7, results }, &mut out);
    assert_eq!(&out[..], &[0x90, 0x05, 0x00, 0x07, 0x00, 0x01, 0x87]);
}

#[test]
fn connack_codes_follow_the_version() {
    let mut out = BytesMut::new();
    let ack = Outbound::ConnAck {
        session_present: true,
        refusal: Some(Refusal::BadCredentials),
        props: ConnAckProps::default(),
    };
    write(Protocol::V4, ack.clone(), &mut out);
    assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x04], "3.1.1: bad user name or password, no session");
    let mut out = BytesMut::new();
    write(Protocol::V5, ack, &mut out);
    assert_eq!(&out[..4], &[0x20, 0x03, 0x00, 0x86], "v5: 0x86");
}

#[test]
fn published_packets_survive_a_round_trip() {
    let p = Publish {
        topic: "to/u/msg".into(),
        payload: Bytes::from_static(b"{}"),
        qos: 1,
        retain: false,
        dup: true,
        pkid: 9,
        topic_alias: false,
    };
    for protocol in [Protocol::V4, Protocol::V5] {
        let mut out = BytesMut::new();
        write(protocol, Outbound::Publish(p.clone()), &mut out);
        assert_eq!(read(protocol, &mut out, 1024), Ok(Inbound::Publish(p.clone())), "{protocol:?}");
    }
}

#[test]
fn v5_disconnects_carry_their_reason_and_are_readable_by_clients() {
    for reason in [CloseReason::TopicNameInvalid, CloseReason::SessionRevoked, CloseReason::PacketTooLarge] {
        let mut out = BytesMut::new();
        write(Protocol::V5, Outbound::Disconnect(reason), &mut out);
        let parsed = v5::Packet::read(&mut out, None);
        match parsed {
            Ok(v5::Packet::Disconnect(d)) => {
                assert_ne!(d.reason_code, v5::DisconnectReasonCode::NormalDisconnection, "{reason:?}");
                assert!(d.properties.and_then(|p| p.reason_string).is_some_and(|r| !r.is_empty()));
            }
            other => panic!("{reason:?}: {other:?}"),
        }
    }
}
