//! `herald --dev`: a local server with throwaway credentials. It listens on loopback only,
//! generates an HS256 secret and an API key at every start (from the operating system's
//! CSPRNG), and prints them with a ready token and commands to paste.

use std::{fmt::Write as _, net::SocketAddr, time::Duration};

use herald_config::BaseConfig;
use herald_utils::{Clock as _, SystemClock};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

/// The user of the printed token.
const SAMPLE_USER: &str = "alice";
/// The topic of the printed commands.
const SAMPLE_TOPIC: &str = "demo";
/// How long the printed token is valid.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// Random bytes in the secret: 256 bits, the key size RFC 7518 asks of HS256.
const SECRET_BYTES: usize = 32;
/// Random bytes in the API key.
const API_KEY_BYTES: usize = 24;

/// The throwaway credentials of a `--dev` run; they live only in this process.
pub(crate) struct DevMode {
    /// The HS256 secret, hex.
    secret: String,
    /// The one API key.
    api_key: String,
}

impl DevMode {
    /// Fresh credentials from the operating system's CSPRNG.
    pub(crate) fn generate() -> Result<Self, getrandom::Error> {
        Ok(Self {
            secret: random_hex(SECRET_BYTES)?,
            api_key: format!("herald_dev_{}", random_hex(API_KEY_BYTES)?),
        })
    }

    /// The configuration overrides of dev mode, applied over every other layer: the secret,
    /// the API key, HS256, and any origin (so the printed browser snippet works from any page).
    pub(crate) fn overrides(&self) -> Vec<(String, String)> {
        [
            ("jwt_algorithm", "HS256"),
            ("jwt_secret", self.secret.as_str()),
            ("api_keys", self.api_key.as_str()),
            ("allowed_origins", "*"),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
    }

    /// Prints the credentials and what to paste to stdout, for a server listening on `addr`.
    pub(crate) fn announce(&self, addr: SocketAddr) {
        match self.banner(addr, SystemClock.unix_ms() / 1000) {
            Ok(banner) => {
                #[allow(clippy::print_stdout)]
                // Dev mode's output is for the person who started it.
                {
                    println!("{banner}");
                }
            }
            Err(error) => tracing::error!(%error, "cannot mint the dev token"),
        }
    }

    /// The text [`announce`](Self::announce) prints, with a token issued at `issued` (seconds
    /// since the Unix epoch).
    fn banner(&self, addr: SocketAddr, issued: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = json!({
            "sub": SAMPLE_USER,
            "iat": issued,
            "exp": issued + TOKEN_LIFETIME.as_secs(),
            "topics": ["*"],
            "publish": ["*"],
        });
        let token = jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(self.secret.as_bytes()),
        )?;
        let hours = TOKEN_LIFETIME.as_secs() / 3600;
        let key = &self.api_key;
        let ws = format!("ws://{addr}/ws?token={token}");
        let subscribe = format!(r#"{{"type":"subscribe","data":{{"topic":"{SAMPLE_TOPIC}"}}}}"#);
        let publish = format!(r#"{{"topic":"{SAMPLE_TOPIC}","data":{{"hello":"world"}}}}"#);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = write!(
            text,
            "\
Herald dev mode on http://{addr}: throwaway credentials, new at every start. Not for production.

  HERALD_JWT_SECRET={secret}
  HERALD_API_KEYS={key}
  token for \"{SAMPLE_USER}\" (every topic, valid {hours} h): {token}

Publish (from your backend):
  curl -sS http://{addr}/api/publish -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' -d '{publish}'

Subscribe (websocat), then send the subscribe line:
  websocat '{ws}'
  {subscribe}

Or from a browser console:
  const ws = new WebSocket(\"{ws}\");
  ws.onmessage = (event) => console.log(JSON.parse(event.data));
  ws.onopen = () => ws.send(JSON.stringify({{type: \"subscribe\", data: {{topic: \"{SAMPLE_TOPIC}\"}}}}));",
            secret = self.secret,
        );
        Ok(text)
    }
}

/// Refuses a configuration whose listeners are not all on loopback: dev credentials are
/// printed in the clear and must not open a server to the network.
pub(crate) fn check_loopback(config: &BaseConfig) -> Result<(), String> {
    let listeners = [
        ("HERALD_LISTEN (listen)", Some(config.listen)),
        ("HERALD_ADMIN_LISTEN (admin_listen)", config.admin_listen),
    ];
    for (setting, addr) in listeners {
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
        {
            return Err(format!(
                "--dev listens on loopback only, but {setting} is {addr}; use 127.0.0.1 or [::1]"
            ));
        }
    }
    Ok(())
}

/// `bytes` random bytes from the operating system, as lower-case hex.
fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    let mut hex = String::with_capacity(2 * bytes);
    for byte in buf {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

#[cfg(test)]
mod tests {
    use herald_core::Authenticator as _;

    use super::*;
    use crate::jwt::{JwtAuthenticator, JwtSettings};

    /// A configuration from `env`, with a secret so that it loads, and `overrides`.
    fn config(env: &[(&str, &str)], overrides: Vec<(String, String)>) -> BaseConfig {
        let env = [(
            "HERALD_JWT_SECRET",
            "a-secret-of-at-least-thirty-two-bytes!",
        )]
        .iter()
        .chain(env)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        BaseConfig::load(herald_config::Sources {
            file: None,
            env,
            overrides,
        })
        .expect("test configuration loads")
    }

    #[test]
    fn credentials_are_fresh_and_long() {
        let (a, b) = (
            DevMode::generate().expect("random"),
            DevMode::generate().expect("random"),
        );
        assert_eq!(a.secret.len(), 2 * SECRET_BYTES);
        assert!(a.secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(a.api_key.starts_with("herald_dev_"), "{}", a.api_key);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.api_key, b.api_key);
    }

    #[test]
    fn overrides_win_over_the_environment() {
        let dev = DevMode::generate().expect("random");
        let config = config(
            &[
                ("HERALD_JWT_SECRET", "from-the-environment"),
                ("HERALD_API_KEYS", "env-key"),
                ("HERALD_JWT_ALGORITHM", "RS256"),
                ("HERALD_JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
            ],
            dev.overrides(),
        );
        assert_eq!(
            config.jwt_secret.as_ref().map(|s| s.expose()),
            Some(dev.secret.as_str())
        );
        assert_eq!(config.api_keys.len(), 1);
        assert!(config.api_keys[0].matches(&dev.api_key));
        assert!(!config.jwt_algorithm.uses_public_key());
        assert_eq!(config.allowed_origins, ["*"]);
    }

    #[test]
    fn the_printed_token_is_accepted_for_a_day() {
        let dev = DevMode::generate().expect("random");
        let now = 1_700_000_000;
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("address");
        let banner = dev.banner(addr, now).expect("banner");
        let token = banner
            .lines()
            .find_map(|line| line.trim().strip_prefix("token for \"alice\""))
            .and_then(|rest| rest.rsplit(' ').next())
            .expect("a token line");
        let config = config(&[], dev.overrides());
        let verifier = JwtAuthenticator::new(JwtSettings::from_config(&config).expect("settings"));
        let now_ms = 1_700_000_000_000;
        let principal = verifier.authenticate(token, now_ms).expect("accepted");
        assert_eq!(principal.user.as_str(), "alice");
        assert!(principal.may_subscribe("demo") && principal.may_publish("demo"));
        assert_eq!(principal.expires_at_ms, now_ms + 24 * 3600 * 1000);
        for expected in [
            format!("HERALD_API_KEYS={}", dev.api_key),
            format!("HERALD_JWT_SECRET={}", dev.secret),
            format!(
                "curl -sS http://{addr}/api/publish -H 'Authorization: Bearer {}'",
                dev.api_key
            ),
            format!("websocat 'ws://{addr}/ws?token={token}'"),
            format!("new WebSocket(\"ws://{addr}/ws?token={token}\")"),
        ] {
            assert!(banner.contains(&expected), "{expected} in {banner}");
        }
    }

    #[test]
    fn only_loopback_listeners_are_allowed() {
        let check = |env: &[(&str, &str)]| check_loopback(&config(env, Vec::new()));
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&[("HERALD_LISTEN", "127.0.0.1:0")]), Ok(()));
        assert_eq!(check(&[("HERALD_LISTEN", "[::1]:9000")]), Ok(()));
        assert_eq!(
            check(&[("HERALD_LISTEN", "0.0.0.0:8080")]),
            Err("--dev listens on loopback only, but HERALD_LISTEN (listen) is 0.0.0.0:8080; use 127.0.0.1 or [::1]".to_owned())
        );
        let admin = check(&[("HERALD_ADMIN_LISTEN", "192.168.1.2:9090")]);
        assert!(
            admin.as_ref().is_err_and(
                |e| e.contains("HERALD_ADMIN_LISTEN (admin_listen) is 192.168.1.2:9090")
            ),
            "{admin:?}"
        );
    }
}
