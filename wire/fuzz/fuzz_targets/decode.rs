//! The gate's packet decoding against arbitrary bytes: a CONNECT first, then packets
//! of the version it chose, as the gate reads them from a device. Nothing may panic;
//! whatever decodes must encode and decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_wire::codec::{self, DecodeError, Protocol};

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where to start: with a CONNECT, or mid-session in either version.
    let Some((&mode, bytes)) = data.split_first() else { return };
    let mut buf = BytesMut::from(bytes);
    let protocol = match mode % 3 {
        0 => match codec::read_connect(&mut buf, MAX) {
            Ok(connect) => {
                let mut again = BytesMut::new();
                codec::write_connect(&connect, &mut again);
                assert_eq!(codec::read_connect(&mut again, MAX).as_ref(), Ok(&connect), "CONNECT round trip");
                connect.protocol
            }
            Err(_) => return,
        },
        1 => Protocol::V4,
        _ => Protocol::V5,
    };
    loop {
        match codec::read(protocol, &mut buf, MAX) {
            Ok(packet) => {
                let mut again = BytesMut::new();
                codec::write_inbound(protocol, &packet, &mut again);
                if !again.is_empty() {
                    assert_eq!(codec::read(protocol, &mut again, MAX).as_ref(), Ok(&packet), "round trip");
                }
            }
            Err(DecodeError::Incomplete) | Err(_) => return,
        }
    }
});
