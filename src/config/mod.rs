//! Every setting of the gateway in one typed struct, read from the environment
//! (PROTOCOL.md section 6). A missing or malformed setting stops start-up with
//! an error naming the variable; secrets are never printed.
//!
//! This file holds the struct and the reading of the plain settings; each
//! area with rules of its own has a file: `vars.rs` (lookups and parsing),
//! `jwt.rs`, `thoth.rs`, `mistral.rs`, `sessions.rs` (chronus sessions).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::SecretString;

mod jwt;
mod mistral;
mod sessions;
mod thoth;
mod vars;

use jwt::read_jwt_config;
pub use jwt::{JwtConfig, JwtKey};
use mistral::read_mistral_models;
pub use mistral::{model_of_url, DEFAULT_MISTRAL_WS_URL};
use sessions::read_chronus_settings;
pub use sessions::{ChronusSessionSettings, SessionTokenCheck};
use thoth::with_default_thoth_path;
pub use thoth::{ThothProtocol, DEFAULT_THOTH_PATH};
use vars::{check_ws_url, Vars};

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
    /// `AUDIO_BUFFER_BUDGET_BYTES` (default 1 GiB): audio held for thoth
    /// (queued and kept for replay), process-wide; new sessions are refused
    /// above 80% of it.
    pub audio_buffer_budget_bytes: usize,
    /// `OVERLOAD_CPU_PERCENT` (default 85, `0`: off): new thoth sessions are
    /// refused while the gateway uses more than this share of its cores.
    pub overload_cpu_percent: Option<u32>,
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
            audio_buffer_budget_bytes: thoth::read_audio_buffer_budget(&vars)?,
            overload_cpu_percent: Some(vars.parsed("OVERLOAD_CPU_PERCENT", 85_u32)?)
                .filter(|percent| *percent > 0),
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

#[cfg(test)]
mod tests;
