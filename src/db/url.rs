//! `DATABASE_URL` parsing: which backend, what to hand it, and how to
//! mention the URL in messages without its password.

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::DbError;

/// libpq's own connect timeout (it also bounds the start-up handshake, so a
/// server that accepts TCP and then says nothing cannot hang us).
pub const PG_CONNECT_TIMEOUT_SECS: u32 = 5;

/// What to open, decided from the URL scheme alone.
#[derive(Clone)]
pub enum Target {
    /// A libpq connection URI (`postgres://` or `postgresql://`), with
    /// `connect_timeout` added when missing.
    Postgres { conninfo: String },
    /// `open` is what SQLite is given (a path or a `file:` URI); `file` is
    /// the file on disk, whose parent directory is created if missing.
    Sqlite { open: String, file: PathBuf },
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, DbError> {
        let url = url.trim();
        let unsupported = |reason: &'static str| DbError::UnsupportedUrl {
            url: redact_url(url),
            reason,
        };
        if url.is_empty() {
            return Err(unsupported("it is empty"));
        }
        if let Some(_rest) = strip_prefix_ignore_case(url, "postgres://")
            .or_else(|| strip_prefix_ignore_case(url, "postgresql://"))
        {
            return Ok(Target::Postgres {
                conninfo: with_connect_timeout(url),
            });
        }
        if let Some(rest) = strip_prefix_ignore_case(url, "sqlite://")
            .or_else(|| strip_prefix_ignore_case(url, "sqlite:"))
        {
            // `sqlite:///abs/path` and `sqlite://rel/path`; a query string
            // has no meaning to us.
            let path = cut_at_query(rest);
            return sqlite_path(path.to_owned(), path, url);
        }
        if let Some(rest) = strip_prefix_ignore_case(url, "file:") {
            // A SQLite URI: hand it over as is (SQLite parses its query
            // parameters); work out the file for the directory.
            let path = cut_at_query(rest);
            let path = match path.strip_prefix("//") {
                // `file://localhost/abs` or `file:///abs`
                Some(authority_and_path) => match authority_and_path.find('/') {
                    Some(slash) => &authority_and_path[slash..],
                    None => "",
                },
                None => path,
            };
            return sqlite_path(url.to_owned(), &percent_decode(path), url);
        }
        if url == ":memory:" || url.starts_with(":memory:?") {
            return Err(unsupported(
                "in-memory SQLite is not supported (each pooled connection would get its own database)",
            ));
        }
        if url.contains("://") {
            return Err(unsupported(
                "unknown scheme; use postgres://…, postgresql://…, sqlite://PATH, file:PATH or a plain file path",
            ));
        }
        if looks_like_conninfo(url) {
            return Err(unsupported(
                "key=value connection strings are not supported; use postgres://user:password@host:port/dbname",
            ));
        }
        sqlite_path(url.to_owned(), url, url)
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Target::Postgres { .. } => "postgres",
            Target::Sqlite { .. } => "sqlite",
        }
    }
}

fn sqlite_path(open: String, file: &str, url: &str) -> Result<Target, DbError> {
    if file.is_empty() {
        return Err(DbError::UnsupportedUrl {
            url: redact_url(url),
            reason: "no SQLite file path given",
        });
    }
    Ok(Target::Sqlite {
        open,
        file: PathBuf::from(file),
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn cut_at_query(s: &str) -> &str {
    s.split(['?', '#']).next().unwrap_or("")
}

/// `host=db port=5432 dbname=x`: libpq accepts it, but a SQLite fallback
/// would create a file of that name, so it is refused outright.
fn looks_like_conninfo(s: &str) -> bool {
    s.split_whitespace().any(|word| {
        word.split_once('=').is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

fn with_connect_timeout(url: &str) -> String {
    if url.to_ascii_lowercase().contains("connect_timeout=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={PG_CONNECT_TIMEOUT_SECS}")
}

/// The URL with any password (in the user info or a `password=` parameter)
/// replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let mut out = match url.find("://") {
        Some(scheme_end) => {
            let (scheme, rest) = url.split_at(scheme_end + 3);
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rfind('@') {
                Some(at) => {
                    let (userinfo, host) = authority.split_at(at);
                    let user = match userinfo.split_once(':') {
                        Some((user, _password)) => format!("{user}:***"),
                        None => userinfo.to_owned(),
                    };
                    format!("{scheme}{user}{host}{tail}")
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    for (start, end) in password_params(&out).into_iter().rev() {
        out.replace_range(start..end, "***");
    }
    out
}

/// Byte ranges of the values of `password=` parameters (URI query or
/// key=value conninfo).
fn password_params(s: &str) -> Vec<(usize, usize)> {
    const KEY: &str = "password=";
    let lower = s.to_ascii_lowercase();
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find(KEY) {
        let key_start = from + found;
        let value_start = key_start + KEY.len();
        // Only a whole parameter name, not e.g. `sslpassword=`.
        let starts_param =
            key_start == 0 || matches!(s.as_bytes()[key_start - 1], b'?' | b'&' | b' ' | b'\t');
        let rest = &s[value_start..];
        let value_len = if let Some(quoted) = rest.strip_prefix('\'') {
            quoted.find('\'').map_or(rest.len(), |end| end + 2)
        } else {
            rest.find(['&', '#', ' ', '\t']).unwrap_or(rest.len())
        };
        if starts_param && value_len > 0 {
            ranges.push((value_start, value_start + value_len));
        }
        from = value_start;
    }
    ranges
}

/// Every password the URL carries, raw and percent-decoded, so that
/// messages from the driver can be scrubbed of them too.
fn url_secrets(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        if let Some(at) = authority.rfind('@') {
            if let Some((_, password)) = authority[..at].split_once(':') {
                secrets.push(password.to_owned());
            }
        }
    }
    for (start, end) in password_params(url) {
        let value = url[start..end].trim_matches('\'');
        secrets.push(value.to_owned());
    }
    let decoded: Vec<String> = secrets.iter().map(|s| percent_decode(s)).collect();
    secrets.extend(decoded);
    secrets.retain(|s| !s.is_empty());
    secrets.sort();
    secrets.dedup();
    // Longest first, so that a password containing another is removed whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()));
            if let Some(Ok(byte)) = hex.map(|hex| u8::from_str_radix(hex, 16)) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the URL's passwords from any message (driver errors may echo
/// parts of the connection string).
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<Zeroizing<String>>,
}

impl Redactor {
    pub fn for_url(url: &str) -> Self {
        Self {
            secrets: url_secrets(url).into_iter().map(Zeroizing::new).collect(),
        }
    }

    pub fn scrub(&self, message: &str) -> String {
        let mut message = message.to_owned();
        for secret in &self.secrets {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), "***");
            }
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_file(url: &str) -> PathBuf {
        match Target::parse(url).unwrap() {
            Target::Sqlite { file, .. } => file,
            Target::Postgres { .. } => panic!("{url} parsed as PostgreSQL"),
        }
    }

    #[test]
    fn postgres_schemes_choose_postgres_with_a_connect_timeout() {
        for url in [
            "postgres://u:p@db:5432/gw",
            "postgresql://u@db/gw?sslmode=disable",
            "POSTGRES://db/gw",
        ] {
            match Target::parse(url).unwrap() {
                Target::Postgres { conninfo } => {
                    assert!(conninfo.starts_with(url), "{conninfo}");
                    assert!(conninfo.contains("connect_timeout=5"), "{conninfo}");
                }
                Target::Sqlite { .. } => panic!("{url} parsed as SQLite"),
            }
        }
        match Target::parse("postgres://db/gw?connect_timeout=2").unwrap() {
            Target::Postgres { conninfo } => {
                assert_eq!(conninfo, "postgres://db/gw?connect_timeout=2")
            }
            Target::Sqlite { .. } => unreachable!(),
        }
    }

    #[test]
    fn sqlite_forms_resolve_to_the_file() {
        assert_eq!(
            sqlite_file("sqlite://data/gw.db"),
            PathBuf::from("data/gw.db")
        );
        assert_eq!(
            sqlite_file("sqlite:///var/lib/gw.db"),
            PathBuf::from("/var/lib/gw.db")
        );
        assert_eq!(sqlite_file("sqlite:gw.db?mode=rwc"), PathBuf::from("gw.db"));
        assert_eq!(
            sqlite_file("file:data/gw.db?mode=rwc"),
            PathBuf::from("data/gw.db")
        );
        assert_eq!(
            sqlite_file("file:///tmp/a%20b.db"),
            PathBuf::from("/tmp/a b.db")
        );
        assert_eq!(sqlite_file("./data/gw.db"), PathBuf::from("./data/gw.db"));
    }

    #[test]
    fn unsupported_urls_are_refused() {
        for url in [
            "",
            ":memory:",
            "mysql://db/gw",
            "host=db port=5432 dbname=gw",
            "sqlite://",
        ] {
            assert!(Target::parse(url).is_err(), "{url:?} accepted");
        }
    }

    #[test]
    fn redaction_hides_passwords() {
        assert_eq!(
            redact_url("postgres://gw:s3cr%40t@db:5432/gw?sslmode=require"),
            "postgres://gw:***@db:5432/gw?sslmode=require"
        );
        assert_eq!(redact_url("postgres://gw@db/gw"), "postgres://gw@db/gw");
        assert_eq!(
            redact_url("postgres://db/gw?user=gw&password=hunter2&sslmode=disable"),
            "postgres://db/gw?user=gw&password=***&sslmode=disable"
        );
        assert_eq!(
            redact_url("host=db password='a b' dbname=gw"),
            "host=db password=*** dbname=gw"
        );
        assert_eq!(redact_url("data/gw.db"), "data/gw.db");
    }

    #[test]
    fn redactor_scrubs_raw_and_decoded_passwords() {
        let redactor = Redactor::for_url("postgres://gw:s3cr%40t@db/gw?password=other");
        let scrubbed = redactor.scrub("failed for s3cr@t, s3cr%40t and other");
        assert_eq!(scrubbed, "failed for ***, *** and ***");
    }
}
