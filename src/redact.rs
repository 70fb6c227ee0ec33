//! Helpers that keep secrets out of logs and monitoring output.

/// A URL with its user-info and query string removed: safe to log or show in
/// monitoring (tokens travel in queries, passwords in user-info).
pub fn strip_credentials(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.has_host() => {
            // Setting these can only fail for URLs without a host, excluded above.
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        // Not a URL with a host (e.g. a SQLite path): nothing to strip, but a
        // `?` could still carry options; drop it to be safe.
        _ => raw.split('?').next().unwrap_or_default().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_password_user_and_query() {
        assert_eq!(
            strip_credentials("postgres://app:hunter2@db:5432/chronus?sslmode=require"),
            "postgres://db:5432/chronus"
        );
        assert_eq!(
            strip_credentials("wss://thoth.internal/stream-audio?token=abc"),
            "wss://thoth.internal/stream-audio"
        );
    }

    #[test]
    fn leaves_plain_paths_alone() {
        assert_eq!(strip_credentials("data/gateway.db"), "data/gateway.db");
    }
}
