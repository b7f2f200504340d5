//! `bus.url`: an external MQTT broker (or cluster) carrying the bus instead of the
//! embedded one, parsed once at start into where it is and how Parley signs in.

use std::fmt;

use secrecy::SecretString;

/// The port of `mqtt://host` when the URL names none.
pub const DEFAULT_PORT: u16 = 1883;

/// An external bus, from `bus.url`.
#[derive(Clone)]
pub struct ExternalBus {
    pub host: String,
    pub port: u16,
    /// User name and password (percent-decoded), when the URL has them.
    pub credentials: Option<(String, SecretString)>,
}

impl fmt::Debug for ExternalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalBus")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// Why `bus.url` cannot be used; names the setting and its variable.
#[derive(Debug, thiserror::Error)]
#[error("bus.url (PARLEY_BUS__URL) {reason}")]
pub struct BusUrlError {
    reason: String,
}

fn refuse(reason: impl Into<String>) -> BusUrlError {
    BusUrlError { reason: reason.into() }
}

/// `mqtt://[user[:password]@]host[:port]` → an [`ExternalBus`]. User and password
/// may be percent-encoded (`%40` for `@`). TLS (`mqtts://`) is refused: this build's
/// MQTT client has no TLS.
pub fn parse(url: &str) -> Result<ExternalBus, BusUrlError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(refuse("must be a URL like mqtt://user:password@host:1883"));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "mqtt" | "tcp" => {}
        "mqtts" | "ssl" | "tls" => {
            return Err(refuse(
                "uses TLS, which this build cannot speak to the bus yet: use mqtt:// on a private network \
                 (or a TLS sidecar next to each Parley process)",
            ))
        }
        other => return Err(refuse(format!("must start with mqtt://, not {other}://"))),
    }
    let (userinfo, hostport) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    if hostport.contains(['/', '?', '#']) {
        return Err(refuse("takes no path or query, only mqtt://user:password@host:port"));
    }
    let (host, port) = split_host_port(hostport)?;
    if host.is_empty() {
        return Err(refuse("names no host: mqtt://user:password@host:1883"));
    }
    let credentials = match userinfo {
        None => None,
        Some(info) => {
            let (user, password) = info.split_once(':').unwrap_or((info, ""));
            let user = decode(user)?;
            if user.is_empty() {
                return Err(refuse("has a password but no user name"));
            }
            Some((user, SecretString::from(decode(password)?)))
        }
    };
    Ok(ExternalBus { host, port, credentials })
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, u16), BusUrlError> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| refuse("has an unclosed [ in its host"))?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or_else(|| refuse("has text after its [host]"))?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(refuse(format!("has port {p:?}; a port is a number from 1 to 65535"))),
        },
    };
    Ok((host.to_string(), port))
}

/// Percent-decoding of a URL's user or password.
fn decode(s: &str) -> Result<String, BusUrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| refuse("has a bad %-escape in its user or password"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| refuse("has a user or password that is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn a_full_url_gives_host_port_and_decoded_credentials() {
        let bus = parse("mqtt://parley:p%40ss%3Aword@broker.internal:1884").expect("valid");
        assert_eq!((bus.host.as_str(), bus.port), ("broker.internal", 1884));
        let (user, password) = bus.credentials.expect("credentials");
        assert_eq!((user.as_str(), password.expose_secret()), ("parley", "p@ss:word"));
        assert!(!format!("{:?}", parse("mqtt://u:secret@h").expect("valid")).contains("secret"));
    }

    #[test]
    fn host_alone_takes_the_default_port_and_no_credentials() {
        let bus = parse("mqtt://10.0.0.5/").expect("valid");
        assert_eq!((bus.host.as_str(), bus.port), ("10.0.0.5", DEFAULT_PORT));
        assert!(bus.credentials.is_none());
        let v6 = parse("mqtt://[::1]:2883").expect("valid");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 2883));
    }

    #[test]
    fn bad_urls_are_refused_naming_the_setting_and_its_variable() {
        for (url, says) in [
            ("broker:1883", "mqtt://user:password@host"),
            ("http://broker:1883", "not http://"),
            ("mqtts://broker:8883", "TLS"),
            ("mqtt://:1883", "no host"),
            ("mqtt://user:pw@", "no host"),
            ("mqtt://broker:99999", "port"),
            ("mqtt://broker:0", "port"),
            ("mqtt://broker/topic", "no path"),
            ("mqtt://:pw@broker", "no user name"),
            ("mqtt://u%zz:pw@broker", "%-escape"),
        ] {
            let err = parse(url).expect_err(url).to_string();
            assert!(err.starts_with("bus.url (PARLEY_BUS__URL) "), "{url}: {err}");
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("pw"), "{url}: the password must not be echoed: {err}");
        }
    }
}
