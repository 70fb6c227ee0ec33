//! `DATABASE_URL` parsing: which backend and what to hand it. Messages
//! mention the URL only through [`crate::store::redact`].

use std::path::PathBuf;

use super::DbError;
use crate::store::redact::{looks_like_conninfo, redact};

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
            url: redact(url),
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
            let file = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
            return sqlite_path(url.to_owned(), &file, url);
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
            url: redact(url),
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

fn with_connect_timeout(url: &str) -> String {
    if url.to_ascii_lowercase().contains("connect_timeout=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}connect_timeout={PG_CONNECT_TIMEOUT_SECS}")
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
}
