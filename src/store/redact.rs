//! The one redactor: every secret-bearing string — a URL (user-info, query,
//! fragment), a libpq key=value conninfo, an HTTP credential header value —
//! on its way to a log, an error message or monitoring.
//!
//! One scanner finds where the secrets sit ([`secret_spans`]); [`redact`]
//! masks them, and [`Scrubber`] removes the same values from any other text
//! (a driver's error message may quote the connection string). Values are
//! masked unless their parameter is known to be harmless, so a parameter
//! nobody thought of is hidden, not shown.

use std::ops::Range;

use zeroize::Zeroizing;

/// What a hidden secret is shown as.
pub const MASK: &str = "***";

/// Parameters (URL query or conninfo keys) whose values are never secret and
/// help whoever reads the log; every other value is masked.
const HARMLESS_PARAMS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "sslmode",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "model",
    "mode",
    "cache",
];

/// Authorization schemes: in a header value the credentials follow them.
const AUTH_SCHEMES: &[&str] = &["basic", "bearer", "digest", "token", "negotiate", "apikey"];

/// `text` with every secret it carries replaced by `***`: a URL's password
/// (`user:***@host`), query values and fragment, a conninfo's values
/// (`host=db password=***`), a credential header's credentials
/// (`Bearer ***`). Text without secrets comes back unchanged.
pub fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    for span in secret_spans(text).into_iter().rev() {
        out.replace_range(span, MASK);
    }
    out
}

/// A header value as it may be logged: credentials of `Authorization`,
/// cookies and token or key headers masked whole (their scheme kept), any
/// other value through [`redact`].
pub fn redact_header(name: &str, value: &str) -> String {
    let name = name.to_ascii_lowercase();
    let secret_header = matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || ["token", "key", "secret", "password"]
        .iter()
        .any(|word| name.contains(word));
    if !secret_header {
        return redact(value);
    }
    match auth_scheme_credentials(value) {
        Some(span) => format!("{}{MASK}", &value[..span.start]),
        None => MASK.to_owned(),
    }
}

/// Removes known secret values (those [`redact`] finds in a URL, raw and
/// percent-decoded) from any message, e.g. a database driver's error.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Longest first, so that a secret containing another goes whole.
    secrets: Vec<Zeroizing<String>>,
}

impl Scrubber {
    pub fn for_secrets_in(text: &str) -> Self {
        let mut secrets: Vec<String> = Vec::new();
        for span in secret_spans(text) {
            let raw = text[span].trim_matches('\'');
            secrets.push(raw.to_owned());
            secrets.push(
                percent_encoding::percent_decode_str(raw)
                    .decode_utf8_lossy()
                    .into_owned(),
            );
        }
        secrets.retain(|s| !s.is_empty());
        secrets.sort();
        secrets.dedup();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Scrubber {
            secrets: secrets.into_iter().map(Zeroizing::new).collect(),
        }
    }

    pub fn scrub(&self, message: &str) -> String {
        let mut message = message.to_owned();
        for secret in &self.secrets {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), MASK);
            }
        }
        message
    }
}

/// Byte ranges of the secrets in `text`, in order, not overlapping.
fn secret_spans(text: &str) -> Vec<Range<usize>> {
    if let Some(span) = auth_scheme_credentials(text) {
        return vec![span];
    }
    if let Some(scheme_end) = text.find("://").map(|at| at + 3) {
        let rest = &text[scheme_end..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let mut spans = Vec::new();
        if let Some(at) = rest[..authority_len].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                if colon + 1 < at {
                    spans.push(scheme_end + colon + 1..scheme_end + at);
                }
            }
        }
        spans.extend(query_and_fragment_spans(text, scheme_end + authority_len));
        return spans;
    }
    if looks_like_conninfo(text) {
        return conninfo_spans(text);
    }
    // A plain path (a SQLite file, a `file:` URI): only a query can hold one.
    query_and_fragment_spans(text, 0)
}

/// `Bearer abc…`: the credentials after a known scheme.
fn auth_scheme_credentials(text: &str) -> Option<Range<usize>> {
    let (scheme, credentials) = text.split_once(' ')?;
    let is_scheme = AUTH_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme));
    let start = text.len() - credentials.trim_start().len();
    (is_scheme && start < text.len()).then_some(start..text.len())
}

/// Values of a `?query` (all but harmless ones) and a whole `#fragment`,
/// searched from byte `from` on.
fn query_and_fragment_spans(text: &str, from: usize) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let fragment_at = text[from..].find('#').map(|i| from + i);
    let query_end = fragment_at.unwrap_or(text.len());
    if let Some(query_at) = text[from..query_end].find('?').map(|i| from + i + 1) {
        let mut param_start = query_at;
        for param in text[query_at..query_end].split('&') {
            let value = match param.split_once('=') {
                Some((name, value)) if !is_harmless(name) => {
                    Some(param_start + name.len() + 1..param_start + name.len() + 1 + value.len())
                }
                Some(_) => None,
                // A bare word may be a token on its own.
                None => Some(param_start..param_start + param.len()),
            };
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                spans.push(value);
            }
            param_start += param.len() + 1;
        }
    }
    if let Some(at) = fragment_at.filter(|at| at + 1 < text.len()) {
        spans.push(at + 1..text.len());
    }
    spans
}

fn is_harmless(name: &str) -> bool {
    HARMLESS_PARAMS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// `host=db port=5432 dbname=x`: libpq's key=value form (which
/// `DATABASE_URL` refuses, and which is redacted value by value).
pub fn looks_like_conninfo(text: &str) -> bool {
    text.split_whitespace().any(|word| {
        word.split_once('=').is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// Values of the non-harmless keys of a conninfo, quoted values whole
/// (`password='a b\' c'`).
fn conninfo_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &text[key_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue; // a bare word: nothing to mask
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value_start = i;
        if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
        }
        if i > value_start && !is_harmless(key) {
            spans.push(value_start..i);
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_masked_and_users_kept() {
        assert_eq!(
            redact("postgres://gw:s3cr%40t@db:5432/gw?sslmode=require"),
            "postgres://gw:***@db:5432/gw?sslmode=require"
        );
        assert_eq!(redact("postgres://gw@db/gw"), "postgres://gw@db/gw");
        assert_eq!(
            redact("ws://127.0.0.1:8765/stream-audio"),
            "ws://127.0.0.1:8765/stream-audio"
        );
    }

    #[test]
    fn secret_query_values_and_fragments_are_masked_harmless_ones_kept() {
        assert_eq!(
            redact("postgres://db/gw?user=gw&password=hunter2&sslmode=disable"),
            "postgres://db/gw?user=gw&password=***&sslmode=disable"
        );
        assert_eq!(
            redact("wss://thoth.internal/stream-audio?token=abc&sig=x#frag"),
            "wss://thoth.internal/stream-audio?token=***&sig=***#***"
        );
        assert_eq!(
            redact("wss://api.mistral.ai/v1/realtime?model=voxtral-mini"),
            "wss://api.mistral.ai/v1/realtime?model=voxtral-mini"
        );
        assert_eq!(redact("wss://h/p?abcdef"), "wss://h/p?***");
    }

    #[test]
    fn conninfo_values_are_masked_harmless_keys_kept() {
        assert_eq!(
            redact("host=127.0.0.1 port=1 password=hunter2 dbname=x"),
            "host=127.0.0.1 port=1 password=*** dbname=x"
        );
        assert_eq!(
            redact("host=db password='a b\\' c' dbname=gw sslpassword=k"),
            "host=db password=*** dbname=gw sslpassword=***"
        );
        assert_eq!(
            redact("host=db password = hunter2"),
            "host=db password = ***"
        );
    }

    #[test]
    fn credential_headers_are_masked() {
        assert_eq!(redact("Bearer eyJhbGciOi.x.y"), "Bearer ***");
        assert_eq!(redact("Basic dXNlcjpwYXNz=="), "Basic ***");
        assert_eq!(redact_header("Authorization", "Bearer abc"), "Bearer ***");
        assert_eq!(redact_header("X-Thoth-Token", "t0k3n"), "***");
        assert_eq!(redact_header("Cookie", "chronus_token=abc"), "***");
        assert_eq!(
            redact_header("Origin", "https://app.example"),
            "https://app.example"
        );
    }

    #[test]
    fn plain_paths_keep_their_path_and_lose_query_secrets() {
        assert_eq!(redact("data/gw.db"), "data/gw.db");
        assert_eq!(
            redact("file:data/gw.db?mode=rwc"),
            "file:data/gw.db?mode=rwc"
        );
        assert_eq!(redact("file:gw.db?key=abc"), "file:gw.db?key=***");
    }

    #[test]
    fn the_scrubber_removes_raw_and_decoded_secrets_from_any_message() {
        let scrubber = Scrubber::for_secrets_in("postgres://gw:s3cr%40t@db/gw?password=other");
        assert_eq!(
            scrubber.scrub("failed for s3cr@t, s3cr%40t and other"),
            "failed for ***, *** and ***"
        );
        let conninfo = Scrubber::for_secrets_in("host=db password='hunter 2'");
        assert_eq!(conninfo.scrub("auth failed: hunter 2"), "auth failed: ***");
        assert_eq!(Scrubber::for_secrets_in("data/gw.db").scrub("x"), "x");
    }
}
