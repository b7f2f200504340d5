//! Delivering one-time codes: email through SMTP (lettre), SMS through the
//! configured provider's HTTP endpoint, and — in development only, when neither is
//! configured — a log line. Sending happens off the request path, so a slow or
//! failing provider never changes what (or when) the client is answered.

use std::time::Duration;

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Where codes go, built once from the `[delivery]` settings.
#[derive(Clone, Default)]
pub struct Delivery {
    mail: Option<Mailer>,
    sms: Option<Sms>,
    /// Log codes for which no channel is configured (development only).
    log_fallback: bool,
}

#[derive(Clone)]
struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

#[derive(Clone)]
struct Sms {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

/// The delivery settings, as plain values (the domain does not read configuration).
#[derive(Debug, Clone, Default)]
pub struct DeliveryConfig {
    pub production: bool,
    pub smtp_url: Option<String>,
    pub mail_from: String,
    pub sms_url: Option<String>,
    pub sms_token: Option<String>,
}

/// Why delivery could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("delivery.smtp_url is not a usable SMTP URL: {0}")]
    SmtpUrl(String),
    #[error("delivery.mail_from is not a mailbox: {0}")]
    MailFrom(String),
    #[error("delivery.mode is production, so delivery.smtp_url or delivery.sms_url must be set")]
    MissingInProduction,
    #[error("the SMS client cannot be built: {0}")]
    Sms(String),
}

/// What a code is for, as said in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    Verify,
    ResetPassword,
}

impl Delivery {
    pub fn new(config: &DeliveryConfig) -> Result<Self, DeliveryError> {
        if config.production && config.smtp_url.is_none() && config.sms_url.is_none() {
            return Err(DeliveryError::MissingInProduction);
        }
        let mail = match &config.smtp_url {
            Some(url) => Some(Mailer {
                transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| DeliveryError::SmtpUrl(e.to_string()))?
                    .timeout(Some(Duration::from_secs(20)))
                    .build(),
                from: config
                    .mail_from
                    .parse()
                    .map_err(|e: lettre::address::AddressError| DeliveryError::MailFrom(e.to_string()))?,
            }),
            None => None,
        };
        let sms = match &config.sms_url {
            Some(url) => Some(Sms {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .map_err(|e| DeliveryError::Sms(e.to_string()))?,
                url: url.clone(),
                token: config.sms_token.clone(),
            }),
            None => None,
        };
        Ok(Self { mail, sms, log_fallback: !config.production })
    }

    /// Whether codes can reach emails (`email`) or phones (otherwise).
    pub fn reaches(&self, email: bool) -> bool {
        self.log_fallback || if email { self.mail.is_some() } else { self.sms.is_some() }
    }

    /// Sends `code` to `to` (an email address or an E.164 phone) in the background.
    pub fn send_code(&self, to: &str, code: &str, purpose: CodePurpose) {
        let text = match purpose {
            CodePurpose::Verify => format!("Your Parley verification code is {code}. It expires in a few minutes."),
            CodePurpose::ResetPassword => format!(
                "Your Parley password reset code is {code}. If you did not ask to reset your password, ignore this."
            ),
        };
        let subject = match purpose {
            CodePurpose::Verify => "Your Parley verification code",
            CodePurpose::ResetPassword => "Your Parley password reset code",
        };
        let this = self.clone();
        let to = to.to_string();
        let code = code.to_string();
        tokio::spawn(async move {
            let channel = if to.contains('@') { "email" } else { "sms" };
            let sent =
                if channel == "email" { this.mail(&to, subject, &text).await } else { this.sms(&to, &text).await };
            match sent {
                Ok(true) => tracing::info!(channel, "one-time code sent"),
                // Development only (production refuses to start without both channels).
                Ok(false) => tracing::info!(channel, to = %to, code = %code, "development delivery: one-time code"),
                Err(e) => tracing::error!(channel, error = %e, "one-time code could not be delivered"),
            }
        });
    }

    async fn mail(&self, to: &str, subject: &str, text: &str) -> Result<bool, String> {
        let Some(mailer) = &self.mail else { return self.fallback() };
        let to: Mailbox = to.parse().map_err(|e: lettre::address::AddressError| e.to_string())?;
        let message = Message::builder()
            .from(mailer.from.clone())
            .to(to)
            .subject(subject)
            .body(text.to_string())
            .map_err(|e| e.to_string())?;
        mailer.transport.send(message).await.map_err(|e| e.to_string())?;
        Ok(true)
    }

    async fn sms(&self, to: &str, text: &str) -> Result<bool, String> {
        let Some(sms) = &self.sms else { return self.fallback() };
        let mut request = sms.client.post(&sms.url).json(&serde_json::json!({ "to": to, "text": text }));
        if let Some(token) = &sms.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("SMS provider answered {}", response.status()));
        }
        Ok(true)
    }

    fn fallback(&self) -> Result<bool, String> {
        if self.log_fallback {
            Ok(false)
        } else {
            Err("no delivery configured for this channel".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(production: bool, smtp: bool, sms: bool) -> DeliveryConfig {
        DeliveryConfig {
            production,
            smtp_url: smtp.then(|| "smtp://127.0.0.1:2525".to_string()),
            mail_from: "Parley <no-reply@example.com>".into(),
            sms_url: sms.then(|| "http://127.0.0.1:9/sms".to_string()),
            sms_token: None,
        }
    }

    #[test]
    fn production_needs_a_real_channel_and_never_logs_codes() {
        assert!(matches!(Delivery::new(&config(true, false, false)), Err(DeliveryError::MissingInProduction)));
        let mail_only = Delivery::new(&config(true, true, false)).expect("mail only");
        assert!(mail_only.reaches(true));
        assert!(!mail_only.reaches(false), "no SMS provider and no log fallback in production");
        assert_eq!(mail_only.fallback(), Err("no delivery configured for this channel".to_string()));
    }

    #[test]
    fn development_logs_what_it_cannot_send() {
        let dev = Delivery::new(&config(false, false, false)).expect("development");
        assert!(dev.reaches(true) && dev.reaches(false));
        assert_eq!(dev.fallback(), Ok(false));
    }

    #[test]
    fn bad_settings_are_refused_with_their_name() {
        let mut bad = config(false, true, false);
        bad.smtp_url = Some("not a url".into());
        assert!(Delivery::new(&bad).err().is_some_and(|e| e.to_string().contains("delivery.smtp_url")));
        let mut bad = config(false, true, false);
        bad.mail_from = "no mailbox here".into();
        assert!(Delivery::new(&bad).err().is_some_and(|e| e.to_string().contains("delivery.mail_from")));
    }
}
