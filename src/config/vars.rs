//! Reading variables: trimmed lookups, defaults, parse errors that name the
//! variable, and the URL check shared by every `*_WS_URL`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;

/// Reads variables from a lookup function, so tests can configure a gateway
/// without touching the process environment.
pub(super) struct Vars<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "is required but not set"))
    }

    pub(super) fn parsed<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError>
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

    pub(super) fn secs(
        &self,
        name: &'static str,
        default_secs: u64,
    ) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.parsed(name, default_secs)?))
    }

    pub(super) fn millis(
        &self,
        name: &'static str,
        default_ms: u64,
    ) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(self.parsed(name, default_ms)?))
    }
}

pub(super) fn check_ws_url(var: &'static str, raw: &str) -> Result<(), ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| ConfigError::new(var, format!("not a URL: {e}")))?;
    match url.scheme() {
        "ws" | "wss" if url.host().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            var,
            "must be a ws:// or wss:// URL with a host",
        )),
    }
}
