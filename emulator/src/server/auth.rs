//! Who a connection is: SASL (ANONYMOUS, PLAIN, MSSBCBS) and the SAS tokens it put on `$cbs`.
//!
//! A link to an entity is allowed when the connection authenticated with the key over SASL PLAIN, or
//! holds an unexpired token whose audience covers the entity's path. Audiences are compared by path only:
//! clients name the emulator's host in many ways (`localhost`, `127.0.0.1`, with or without the port).
//! Tokens are signed with the emulator's key, or with an IoT hub policy's key for the hub's built-in
//! endpoint; a service signing in to the IoT hub itself (`<policy>@sas.root.<hub>`) is recorded as
//! such (see `iothub.rs`).

use fe2o3_amqp_types::sasl::SaslCode;
use hubroute_protocol::{SasKey, SasToken};

use super::iothub::{HubSignIn, IotHubFace};

/// The SASL mechanisms offered, as Event Hubs (and Microsoft's emulator) offer them.
pub(crate) const MECHANISMS: [&str; 3] = ["ANONYMOUS", "PLAIN", "MSSBCBS"];

/// What a connection has proven.
#[derive(Debug, Default)]
pub(crate) struct ConnectionAuth {
    /// SASL PLAIN with the key itself: every entity.
    key_holder: bool,
    /// `(audience path, expiry)` of accepted tokens.
    tokens: Vec<(String, i64)>,
    /// The IoT hub policy the connection signed in with (SASL PLAIN as `<policy>@sas.root.<hub>`).
    pub(crate) hub: Option<HubSignIn>,
}

/// The path of an audience or address, lower-cased, without scheme, host and surrounding slashes.
pub(crate) fn audience_path(uri: &str) -> String {
    let path = match uri.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => uri,
    };
    path.trim_matches('/').to_ascii_lowercase()
}

impl ConnectionAuth {
    /// Records an accepted token.
    pub(crate) fn add_token(&mut self, token: &SasToken) {
        self.tokens
            .push((audience_path(&token.resource_uri), token.expiry));
    }

    /// Whether the connection may use `entity_path` (e.g. `hub/ConsumerGroups/$Default/Partitions/0`).
    pub(crate) fn authorizes(&self, entity_path: &str, now: i64) -> bool {
        self.authorized_until(entity_path)
            .is_none_or(|until| until > now)
    }

    /// Until when (Unix seconds) the connection may use `entity_path`: `None` for the key holder
    /// (no expiry), else the latest expiry of the tokens covering it (`i64::MIN` when none does).
    /// Event Hubs detaches a link when that moment passes without a renewed token.
    pub(crate) fn authorized_until(&self, entity_path: &str) -> Option<i64> {
        if self.key_holder {
            return None;
        }
        let target = audience_path(entity_path);
        Some(
            self.tokens
                .iter()
                .filter(|(audience, _)| {
                    audience.is_empty()
                        || target == *audience
                        || target.starts_with(&format!("{audience}/"))
                })
                .map(|(_, expiry)| *expiry)
                .max()
                .unwrap_or(i64::MIN),
        )
    }
}

/// Verifies a token string against the key (or, when it names another key, against the IoT hub's
/// policies) and returns it parsed, or the CBS status and description.
pub(crate) fn verify_token(
    key: &SasKey,
    iot_hub: Option<&IotHubFace>,
    token: &str,
    now: i64,
) -> Result<SasToken, (i32, String)> {
    let parsed = SasToken::parse(token).map_err(|error| (400, error.to_string()))?;
    match iot_hub {
        Some(hub)
            if parsed
                .key_name
                .as_deref()
                .is_some_and(|name| name != key.name) =>
        {
            hub.verify_event_hubs_token(&parsed, now)
                .map_err(|problem| (401, problem))?;
        }
        _ => key
            .verify(&parsed, now)
            .map_err(|error| (401, error.to_string()))?,
    }
    Ok(parsed)
}

/// The outcome of a client's `sasl-init`: ANONYMOUS and MSSBCBS always pass (a token on `$cbs`
/// follows); PLAIN passes with the key itself (`auth` then covers every entity) or with a SAS token
/// as the password.
pub(crate) fn authenticate(
    key: &SasKey,
    iot_hub: Option<&IotHubFace>,
    auth: &mut ConnectionAuth,
    mechanism: &str,
    initial_response: Option<&[u8]>,
) -> SaslCode {
    match mechanism {
        "ANONYMOUS" | "MSSBCBS" => SaslCode::Ok,
        "PLAIN" => initial_response.map_or(SaslCode::Auth, |response| {
            plain(key, iot_hub, auth, response)
        }),
        _ => SaslCode::Auth,
    }
}

fn plain(
    key: &SasKey,
    iot_hub: Option<&IotHubFace>,
    auth: &mut ConnectionAuth,
    response: &[u8],
) -> SaslCode {
    let mut fields = response.split(|byte| *byte == 0);
    let (Some(_authzid), Some(user), Some(password)) =
        (fields.next(), fields.next(), fields.next())
    else {
        return SaslCode::Auth;
    };
    let (Ok(user), Ok(password)) = (std::str::from_utf8(user), std::str::from_utf8(password))
    else {
        return SaslCode::Auth;
    };
    if user == key.name && password == key.expose_secret() {
        auth.key_holder = true;
        return SaslCode::Ok;
    }
    let now = chrono::Utc::now().timestamp();
    if let Some(hub) = iot_hub
        && hubroute_protocol::iothub_amqp::parse_sasl_plain_user(user).is_some()
    {
        auth.hub = hub.sign_in(user, password, now);
        return if auth.hub.is_some() {
            SaslCode::Ok
        } else {
            SaslCode::Auth
        };
    }
    match verify_token(key, iot_hub, password, now) {
        Ok(token) => {
            auth.add_token(&token);
            SaslCode::Ok
        }
        Err(_) => SaslCode::Auth,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authorize_their_path_and_below_until_they_expire() {
        let key = SasKey::new("root", "secret");
        let token = verify_token(
            &key,
            None,
            key.sign("sb://localhost:5673/hub", 100).as_str(),
            10,
        )
        .unwrap();
        let mut auth = ConnectionAuth::default();
        auth.add_token(&token);
        assert!(auth.authorizes("hub/ConsumerGroups/$Default/Partitions/0", 10));
        assert!(auth.authorizes("amqp://127.0.0.1:5673/HUB", 10));
        assert!(!auth.authorizes("hub2", 10));
        assert!(!auth.authorizes("hub", 100));
        assert_eq!(verify_token(&key, None, "garbage", 10).unwrap_err().0, 400);
        let wrong = SasKey::new("root", "other").sign("sb://h/hub", 100);
        assert_eq!(
            verify_token(&key, None, wrong.as_str(), 10).unwrap_err().0,
            401
        );
    }

    #[test]
    fn sasl_plain_accepts_the_key_or_a_token() {
        let key = SasKey::new("root", "secret");
        let mut auth = ConnectionAuth::default();
        assert_eq!(
            plain(&key, None, &mut auth, b"\0root\0secret"),
            SaslCode::Ok
        );
        assert!(auth.authorizes("anything", 0));
        let mut fresh = ConnectionAuth::default();
        assert_eq!(
            plain(&key, None, &mut fresh, b"\0root\0wrong"),
            SaslCode::Auth
        );
        let token = key.sign("sb://h/hub", i64::MAX);
        assert_eq!(
            plain(
                &key,
                None,
                &mut fresh,
                format!("\0x\0{}", token.as_str()).as_bytes()
            ),
            SaslCode::Ok
        );
    }

    #[test]
    fn sasl_mechanisms_answer_like_event_hubs() {
        let key = SasKey::new("root", "secret");
        let token = key.sign("sb://127.0.0.1/hub", chrono::Utc::now().timestamp() + 3600);
        let plain = |user: &str, password: &str| Some(format!("\0{user}\0{password}"));
        let cases = [
            ("ANONYMOUS", None, SaslCode::Ok, false),
            ("MSSBCBS", None, SaslCode::Ok, false),
            ("PLAIN", plain("root", "secret"), SaslCode::Ok, true),
            ("PLAIN", plain("root", token.as_str()), SaslCode::Ok, true),
            ("PLAIN", plain("root", "wrong"), SaslCode::Auth, false),
            ("PLAIN", None, SaslCode::Auth, false),
            ("SCRAM-SHA-256", None, SaslCode::Auth, false),
        ];
        for (mechanism, response, expected, authorised) in cases {
            let mut auth = ConnectionAuth::default();
            let code = authenticate(
                &key,
                None,
                &mut auth,
                mechanism,
                response.as_deref().map(str::as_bytes),
            );
            assert_eq!(code, expected, "{mechanism}");
            let can_read = auth.authorizes(
                "hub/ConsumerGroups/$Default/Partitions/0",
                chrono::Utc::now().timestamp(),
            );
            assert_eq!(
                can_read, authorised,
                "{mechanism}: links authorised by SASL alone"
            );
        }
    }
}
