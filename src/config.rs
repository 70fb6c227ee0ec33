//! Every setting of the gateway in one typed struct, read from the environment
//! (PROTOCOL.md section 6). A missing or malformed setting stops start-up with
//! an error naming the variable; secrets are never printed.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use crate::store::SecretString;

/// Default Mistral realtime endpoint (unreachable from the test machines; tests
/// point `MISTRAL_WS_URL` at a fake).
pub const DEFAULT_MISTRAL_WS_URL: &str =
    "wss://api.mistral.ai/v1/audio/transcriptions/realtime?model=voxtral-mini-transcribe-realtime-2602";

/// A start-up configuration error: which variable, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        ConfigError {
            var,
            problem: problem.into(),
        }
    }
}

/// How the configured thoth endpoints speak (PROTOCOL.md 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThothProtocol {
    /// One shared socket per endpoint, sessions multiplexed (3.1).
    Mux,
    /// Today's thoth: one socket per session, one session per endpoint (3.2).
    Legacy,
}

impl ThothProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ThothProtocol::Mux => "mux",
            ThothProtocol::Legacy => "legacy",
        }
    }
}

/// How tokens are verified. The algorithm is pinned here, never read from a token.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(Vec<u8>),
    /// PEM public key for RS256 / ES256.
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(***)"),
            JwtKey::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

/// Settings of JWT validation (PROTOCOL.md 2.2).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: Algorithm,
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub cookie_name: String,
}

/// What `chronus-gateway demo` adds to the public listener: `GET /demo/token`
/// (a token minted with the HS256 `JWT_SECRET`) and `GET /demo/config`. Never
/// read from the environment, so a production gateway cannot hand out tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSettings {
    /// The `sub` of the tokens `GET /demo/token` mints.
    pub user: String,
    /// Lifetime of those tokens.
    pub token_ttl: Duration,
    /// Base URL of the dev thoth (`ws://127.0.0.1:PORT`, without
    /// `/stream-audio`), for the page's legacy mode.
    pub thoth_ws_url: String,
}

/// What happens at a token's `exp` during a session (PROTOCOL.md 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTokenCheck {
    /// Checked once, at connect; `MAX_SESSION_SECS` bounds the session.
    Connect,
    /// The session ends at `exp` unless the client sends a fresh token.
    Continuous,
}

/// How sessions are bounded and admitted for chronus (issue 10): the token
/// check, the session length cap and the optional note access check.
#[derive(Debug, Clone)]
pub struct ChronusSessionSettings {
    pub token_check: SessionTokenCheck,
    /// `MAX_SESSION_SECS` (default 14400): `SESSION_EXPIRED` 4408 after it.
    pub max_session: Duration,
    /// `NOTE_ACCESS_URL`: a URL with `{noteId}`, asked before a notes-path
    /// session is admitted; `None` admits every positive `noteId`.
    pub note_access_url: Option<String>,
    /// How long the note access check may take (`NOTE_ACCESS_TIMEOUT_MS`,
    /// default 5000; shorter in tests).
    pub note_access_timeout: Duration,
}

/// The gateway's whole configuration.
#[derive(Clone)]
pub struct Config {
    pub bind_addr: SocketAddr,
    pub admin_bind_addr: SocketAddr,
    /// Base of public WebSocket URLs handed to browsers (`/api/mistral/token`);
    /// derived from the request's host when unset.
    pub public_ws_base_url: Option<String>,
    /// May carry a password: held as a secret, logged only through
    /// [`crate::store::redact`].
    pub database_url: SecretString,
    pub jwt: JwtConfig,
    /// Base64 of the 32-byte key that encrypts stored API keys.
    pub api_key_encryption_key: SecretString,
    /// Version the current key tags new ciphertexts with
    /// (`API_KEY_ENCRYPTION_KEY_VERSION`, default 1); bump it on rotation.
    pub api_key_encryption_key_version: u32,
    /// Older keys, kept only to decrypt what they sealed until
    /// `chronus-gateway reencrypt-keys` has moved every row over
    /// (`API_KEY_PREVIOUS_ENCRYPTION_KEYS=VERSION:BASE64[,VERSION:BASE64…]`).
    pub api_key_previous_encryption_keys: Vec<(u32, SecretString)>,
    pub thoth_ws_urls: Vec<String>,
    pub thoth_protocol: ThothProtocol,
    pub thoth_stream_token: Option<SecretString>,
    pub thoth_ca_cert: Option<PathBuf>,
    pub thoth_idle_close: Duration,
    pub thoth_replay_max: Duration,
    pub thoth_resume_timeout: Duration,
    /// Delay between connection attempts doubles from this value (3 retries).
    pub thoth_retry_base: Duration,
    pub legacy_flush_grace: Duration,
    pub mistral_ws_url: String,
    /// Models the native proxy may open (`MISTRAL_MODELS`, comma-separated;
    /// default: the `model` of `MISTRAL_WS_URL`).
    pub mistral_models: Vec<String>,
    /// `None`: every Origin is accepted.
    pub allowed_origins: Option<Vec<String>>,
    pub max_sessions: usize,
    pub max_sessions_per_user: usize,
    pub max_frame_bytes: usize,
    pub max_audio_rate: f64,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Demo-only routes; `None` except under `chronus-gateway demo`.
    pub demo: Option<DemoSettings>,
    pub chronus: ChronusSessionSettings,
}

impl fmt::Debug for Config {
    // Hand-written so that secrets never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bind_addr", &self.bind_addr)
            .field("admin_bind_addr", &self.admin_bind_addr)
            .field("public_ws_base_url", &self.public_ws_base_url)
            .field(
                "database_url",
                &crate::store::redact::redact(self.database_url.expose()),
            )
            .field("jwt_algorithm", &self.jwt.algorithm)
            .field(
                "thoth_ws_urls",
                &self
                    .thoth_ws_urls
                    .iter()
                    .map(|u| crate::store::redact::redact(u))
                    .collect::<Vec<_>>(),
            )
            .field("thoth_protocol", &self.thoth_protocol)
            .field("thoth_stream_token", &self.thoth_stream_token)
            .field(
                "mistral_ws_url",
                &crate::store::redact::redact(&self.mistral_ws_url),
            )
            .field("mistral_models", &self.mistral_models)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_sessions", &self.max_sessions)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_audio_rate", &self.max_audio_rate)
            .field("demo", &self.demo)
            .finish_non_exhaustive()
    }
}

/// Reads variables from a lookup function, so tests can configure a gateway
/// without touching the process environment.
struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    fn parsed<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| ConfigError::new(name, format!("cannot parse {raw:?}: {e}"))),
        }
    }

    fn secs(&self, name: &'static str, default_secs: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.parsed(name, default_secs)?))
    }

    fn millis(&self, name: &'static str, default_ms: u64) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.parsed(name, default_ms)?))
    }
}

impl Config {
    /// Reads the process environment (after `.env` has been loaded by the caller).
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Reads a map of variables; handy for tests and the demo.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Self::from_lookup(&|name| map.get(name).cloned())
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let vars = Vars { lookup };
        let jwt = read_jwt_config(&vars)?;

        let thoth_ws_urls: Vec<String> = vars
            .get("THOTH_WS_URL")
            .unwrap_or_else(|| "ws://127.0.0.1:8765/stream-audio".to_string())
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        for url in &thoth_ws_urls {
            check_ws_url("THOTH_WS_URL", url)?;
        }
        let thoth_ws_urls: Vec<String> = thoth_ws_urls
            .iter()
            .map(|url| with_default_thoth_path(url))
            .collect();
        if thoth_ws_urls.is_empty() {
            return Err(ConfigError::new("THOTH_WS_URL", "names no endpoint"));
        }
        let thoth_protocol = match vars.get("THOTH_PROTOCOL").as_deref() {
            None | Some("mux") => ThothProtocol::Mux,
            Some("legacy") => ThothProtocol::Legacy,
            Some(other) => {
                return Err(ConfigError::new(
                    "THOTH_PROTOCOL",
                    format!("must be `mux` or `legacy`, not {other:?}"),
                ))
            }
        };
        let mistral_ws_url = vars
            .get("MISTRAL_WS_URL")
            .unwrap_or_else(|| DEFAULT_MISTRAL_WS_URL.to_string());
        check_ws_url("MISTRAL_WS_URL", &mistral_ws_url)?;
        let mistral_models = read_mistral_models(&vars, &mistral_ws_url);

        let allowed_origins = vars.get("ALLOWED_ORIGINS").map(|list| {
            list.split(',')
                .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|o| !o.is_empty())
                .collect::<Vec<_>>()
        });

        let max_frame_bytes: usize = vars.parsed("MAX_FRAME_BYTES", 256 * 1024)?;
        if !(1024..=16 * 1024 * 1024).contains(&max_frame_bytes) {
            return Err(ConfigError::new(
                "MAX_FRAME_BYTES",
                "must be between 1024 and 16777216",
            ));
        }
        let max_audio_rate: f64 = vars.parsed("MAX_AUDIO_RATE", 4.0)?;
        if !(max_audio_rate.is_finite() && max_audio_rate >= 1.0) {
            return Err(ConfigError::new("MAX_AUDIO_RATE", "must be a number >= 1"));
        }
        let public_ws_base_url = vars
            .get("PUBLIC_WS_BASE_URL")
            .map(|u| u.trim_end_matches('/').to_string());
        if let Some(url) = &public_ws_base_url {
            check_ws_url("PUBLIC_WS_BASE_URL", url)?;
        }

        Ok(Config {
            bind_addr: vars.parsed("BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            admin_bind_addr: vars
                .parsed("ADMIN_BIND_ADDR", SocketAddr::from(([127, 0, 0, 1], 9091)))?,
            public_ws_base_url,
            database_url: vars
                .get("DATABASE_URL")
                .unwrap_or_else(|| "chronus-gateway.db".to_string())
                .into(),
            jwt,
            api_key_encryption_key: vars.required("API_KEY_ENCRYPTION_KEY")?.into(),
            api_key_encryption_key_version: vars.parsed("API_KEY_ENCRYPTION_KEY_VERSION", 1)?,
            api_key_previous_encryption_keys: read_previous_keys(&vars)?,
            thoth_ws_urls,
            thoth_protocol,
            thoth_stream_token: vars.get("THOTH_STREAM_TOKEN").map(SecretString::from),
            thoth_ca_cert: vars.get("THOTH_CA_CERT").map(PathBuf::from),
            thoth_idle_close: vars.secs("THOTH_IDLE_CLOSE_SECS", 30)?,
            thoth_replay_max: vars.secs("THOTH_REPLAY_MAX_SECS", 30)?,
            thoth_resume_timeout: vars.secs("THOTH_RESUME_TIMEOUT_SECS", 10)?,
            thoth_retry_base: vars.millis("THOTH_RETRY_BASE_MS", 250)?,
            legacy_flush_grace: vars.millis("LEGACY_FLUSH_GRACE_MS", 1500)?,
            mistral_ws_url,
            mistral_models,
            allowed_origins,
            max_sessions: vars.parsed("MAX_SESSIONS", 10_000)?,
            max_sessions_per_user: vars.parsed("MAX_SESSIONS_PER_USER", 5)?,
            max_frame_bytes,
            max_audio_rate,
            idle_timeout: vars.secs("IDLE_TIMEOUT_SECS", 60)?,
            shutdown_grace: vars.secs("SHUTDOWN_GRACE_SECS", 10)?,
            demo: None,
            chronus: read_chronus_settings(&vars)?,
        })
    }
}

fn read_chronus_settings(vars: &Vars<'_>) -> Result<ChronusSessionSettings, ConfigError> {
    let token_check = match vars.get("SESSION_TOKEN_CHECK").as_deref() {
        None | Some("connect") => SessionTokenCheck::Connect,
        Some("continuous") => SessionTokenCheck::Continuous,
        Some(other) => {
            return Err(ConfigError::new(
                "SESSION_TOKEN_CHECK",
                format!("must be `connect` or `continuous`, not {other:?}"),
            ))
        }
    };
    let max_session = vars.secs("MAX_SESSION_SECS", 14_400)?;
    if max_session.is_zero() {
        return Err(ConfigError::new("MAX_SESSION_SECS", "must be at least 1"));
    }
    let note_access_url = vars.get("NOTE_ACCESS_URL");
    if let Some(url) = &note_access_url {
        check_note_access_url(url)?;
    }
    Ok(ChronusSessionSettings {
        token_check,
        max_session,
        note_access_url,
        note_access_timeout: vars.millis("NOTE_ACCESS_TIMEOUT_MS", 5_000)?,
    })
}

fn check_note_access_url(raw: &str) -> Result<(), ConfigError> {
    const VAR: &str = "NOTE_ACCESS_URL";
    if !raw.contains("{noteId}") {
        return Err(ConfigError::new(VAR, "must contain {noteId}"));
    }
    let url = url::Url::parse(&raw.replace("{noteId}", "1"))
        .map_err(|e| ConfigError::new(VAR, format!("not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            VAR,
            "must be an http:// or https:// URL with a host",
        )),
    }
}

fn read_jwt_config(vars: &Vars<'_>) -> Result<JwtConfig, ConfigError> {
    let algorithm = match vars.get("JWT_ALGORITHM").as_deref() {
        None | Some("HS256") => Algorithm::HS256,
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some(other) => {
            return Err(ConfigError::new(
                "JWT_ALGORITHM",
                format!("must be HS256, RS256 or ES256, not {other:?}"),
            ))
        }
    };
    let key = if algorithm == Algorithm::HS256 {
        let secret = vars.required("JWT_SECRET")?;
        if secret.len() < 32 {
            return Err(ConfigError::new(
                "JWT_SECRET",
                "must be at least 32 characters (HS256 needs a strong secret)",
            ));
        }
        JwtKey::Secret(secret.into_bytes())
    } else {
        let path = vars.required("JWT_PUBLIC_KEY_FILE")?;
        let pem = std::fs::read(&path).map_err(|e| {
            ConfigError::new("JWT_PUBLIC_KEY_FILE", format!("cannot read {path}: {e}"))
        })?;
        // Parse now so a bad key stops start-up instead of failing every request.
        let parsed = match algorithm {
            Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map(|_| ()),
            _ => jsonwebtoken::DecodingKey::from_ec_pem(&pem).map(|_| ()),
        };
        parsed.map_err(|e| {
            ConfigError::new(
                "JWT_PUBLIC_KEY_FILE",
                format!("not a {algorithm:?} public key in PEM: {e}"),
            )
        })?;
        JwtKey::PublicKeyPem(pem)
    };
    Ok(JwtConfig {
        algorithm,
        key,
        issuer: vars.get("JWT_ISSUER"),
        audience: vars.get("JWT_AUDIENCE"),
        cookie_name: vars
            .get("JWT_COOKIE_NAME")
            .unwrap_or_else(|| "chronus_token".to_string()),
    })
}

/// `API_KEY_PREVIOUS_ENCRYPTION_KEYS`: `VERSION:BASE64` entries, comma-separated.
/// The keys themselves are checked when the cipher is built.
fn read_previous_keys(vars: &Vars<'_>) -> Result<Vec<(u32, SecretString)>, ConfigError> {
    const VAR: &str = "API_KEY_PREVIOUS_ENCRYPTION_KEYS";
    let Some(list) = vars.get("API_KEY_PREVIOUS_ENCRYPTION_KEYS") else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .enumerate()
        .map(|(i, entry)| {
            // Never quote an entry: it holds a key.
            let bad =
                || ConfigError::new(VAR, format!("entry {} is not VERSION:BASE64_KEY", i + 1));
            let (version, key) = entry.split_once(':').ok_or_else(bad)?;
            let version = version.trim().parse::<u32>().map_err(|_| bad())?;
            let key = key.trim();
            if key.is_empty() {
                return Err(bad());
            }
            Ok((version, SecretString::from(key)))
        })
        .collect()
}

/// The `model` query parameter of a Mistral URL, if it has one.
pub fn model_of_url(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let model = url
        .query_pairs()
        .find(|(name, _)| name == "model")
        .map(|(_, value)| value.into_owned());
    model.filter(|m| !m.is_empty())
}

/// `MISTRAL_MODELS`, or the model `MISTRAL_WS_URL` names when it is unset
/// (none when it names none: then only requests without a `model` pass).
fn read_mistral_models(vars: &Vars, mistral_ws_url: &str) -> Vec<String> {
    match vars.get("MISTRAL_MODELS") {
        Some(list) => list
            .split(',')
            .map(|m| m.trim().to_string())
            .filter(|m| !m.is_empty())
            .collect(),
        None => model_of_url(mistral_ws_url).into_iter().collect(),
    }
}

fn check_ws_url(var: &'static str, raw: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::new(var, format!("not a URL: {e}")))?;
    match url.scheme() {
        "ws" | "wss" if url.host().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            var,
            "must be a ws:// or wss:// URL with a host",
        )),
    }
}

/// Thoth's stream path, appended to a `THOTH_WS_URL` that names none (chronus
/// configures thoth as `ws://host:port` and appends it itself).
pub const DEFAULT_THOTH_PATH: &str = "/stream-audio";

/// `ws://host:8765` (or `ws://host:8765/`) → `ws://host:8765/stream-audio`;
/// a URL with a path is kept exactly as written.
fn with_default_thoth_path(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.path().is_empty() || url.path() == "/" => {
            url.set_path(DEFAULT_THOTH_PATH);
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HashMap<String, String> {
        HashMap::from([
            (
                "JWT_SECRET".into(),
                "0123456789abcdef0123456789abcdef".into(),
            ),
            (
                "API_KEY_ENCRYPTION_KEY".into(),
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            ),
        ])
    }

    #[test]
    fn a_thoth_url_without_a_path_gets_stream_audio() {
        let mut map = base();
        map.insert(
            "THOTH_WS_URL".into(),
            "ws://127.0.0.1:8765, wss://thoth.internal:8443/, ws://h:1/custom?x=1, ws://h:2?x=1"
                .into(),
        );
        let cfg = Config::from_map(&map).unwrap();
        assert_eq!(
            cfg.thoth_ws_urls,
            vec![
                "ws://127.0.0.1:8765/stream-audio",
                "wss://thoth.internal:8443/stream-audio",
                "ws://h:1/custom?x=1",
                "ws://h:2/stream-audio?x=1",
            ]
        );
    }

    #[test]
    fn defaults_are_loopback_and_mux() {
        let cfg = Config::from_map(&base()).unwrap();
        assert_eq!(cfg.bind_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(cfg.admin_bind_addr.to_string(), "127.0.0.1:9091");
        assert_eq!(cfg.thoth_protocol, ThothProtocol::Mux);
        assert_eq!(cfg.max_frame_bytes, 256 * 1024);
        assert_eq!(cfg.thoth_idle_close, Duration::from_secs(30));
        assert_eq!(
            cfg.demo, None,
            "demo routes are never configured from the environment"
        );
    }

    #[test]
    fn missing_secret_names_the_variable() {
        let mut map = base();
        map.remove("JWT_SECRET");
        let err = Config::from_map(&map).unwrap_err();
        assert_eq!(err.var, "JWT_SECRET");
    }

    #[test]
    fn mistral_models_default_to_the_model_of_mistral_ws_url() {
        let cfg = Config::from_map(&base()).unwrap();
        assert_eq!(
            cfg.mistral_models,
            vec!["voxtral-mini-transcribe-realtime-2602"]
        );
        let mut map = base();
        map.insert("MISTRAL_MODELS".into(), " a-model, b-model ,".into());
        let cfg = Config::from_map(&map).unwrap();
        assert_eq!(cfg.mistral_models, vec!["a-model", "b-model"]);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, bad) in [
            ("THOTH_PROTOCOL", "grpc"),
            ("THOTH_WS_URL", "http://thoth"),
            ("MAX_FRAME_BYTES", "lots"),
            ("JWT_ALGORITHM", "none"),
            ("BIND_ADDR", "localhost"),
            ("SESSION_TOKEN_CHECK", "sometimes"),
            ("MAX_SESSION_SECS", "4h"),
            ("MAX_SESSION_SECS", "0"),
            ("NOTE_ACCESS_URL", "http://backend/api/notes"),
            ("NOTE_ACCESS_URL", "ftp://backend/{noteId}"),
        ] {
            let mut map = base();
            map.insert(var.into(), bad.into());
            let err = Config::from_map(&map).unwrap_err();
            assert_eq!(err.var, var, "{bad}");
        }
    }

    #[test]
    fn chronus_session_defaults_are_connect_and_four_hours() {
        let cfg = Config::from_map(&base()).unwrap();
        assert_eq!(cfg.chronus.token_check, SessionTokenCheck::Connect);
        assert_eq!(cfg.chronus.max_session, Duration::from_secs(14_400));
        assert_eq!(cfg.chronus.note_access_url, None);
        assert_eq!(cfg.chronus.note_access_timeout, Duration::from_secs(5));
    }

    #[test]
    fn debug_print_hides_secrets() {
        let mut map = base();
        map.insert("THOTH_STREAM_TOKEN".into(), "thoth-secret-value".into());
        map.insert(
            "DATABASE_URL".into(),
            "postgres://u:hunter2@127.0.0.1/db".into(),
        );
        let printed = format!("{:?}", Config::from_map(&map).unwrap());
        assert!(!printed.contains("thoth-secret-value"));
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("0123456789abcdef"));
        assert!(
            printed.contains("postgres://u:***@127.0.0.1/db"),
            "{printed}"
        );
    }

    #[test]
    fn a_conninfo_database_url_never_prints_its_password() {
        let mut map = base();
        map.insert(
            "DATABASE_URL".into(),
            "host=db port=5432 password=hunter2 dbname=x".into(),
        );
        let config = Config::from_map(&map).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("password=***"), "{printed}");
        // The secret type itself prints nothing either.
        assert_eq!(format!("{:?}", config.database_url), "***");
        assert_eq!(format!("{}", config.api_key_encryption_key), "***");
    }

    #[test]
    fn previous_encryption_keys_are_read_with_their_versions() {
        let mut map = base();
        map.insert("API_KEY_ENCRYPTION_KEY_VERSION".into(), "3".into());
        map.insert(
            "API_KEY_PREVIOUS_ENCRYPTION_KEYS".into(),
            "2:QkJCQg==, 1:QUFBQQ==".into(),
        );
        let cfg = Config::from_map(&map).unwrap();
        assert_eq!(cfg.api_key_encryption_key_version, 3);
        assert_eq!(
            cfg.api_key_previous_encryption_keys,
            vec![(2, "QkJCQg==".into()), (1, "QUFBQQ==".into())]
        );
        map.insert(
            "API_KEY_PREVIOUS_ENCRYPTION_KEYS".into(),
            "secret-without-version".into(),
        );
        let err = Config::from_map(&map).unwrap_err();
        assert_eq!(err.var, "API_KEY_PREVIOUS_ENCRYPTION_KEYS");
        assert!(!err.to_string().contains("secret-without-version"));
    }

    #[test]
    fn several_thoth_endpoints_are_split_on_commas() {
        let mut map = base();
        map.insert(
            "THOTH_WS_URL".into(),
            "ws://127.0.0.1:1/a, ws://127.0.0.1:2/b".into(),
        );
        let cfg = Config::from_map(&map).unwrap();
        assert_eq!(
            cfg.thoth_ws_urls,
            vec!["ws://127.0.0.1:1/a", "ws://127.0.0.1:2/b"]
        );
    }
}
