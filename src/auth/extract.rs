//! Finding the token on a request, in the order PROTOCOL.md 2.2 gives.

use actix_web::http::header;
use actix_web::HttpRequest;

/// The subprotocol a browser offers, followed by its token, to authenticate a
/// WebSocket without a header. The gateway selects it and never echoes the token.
pub const JWT_SUBPROTOCOL: &str = "chronus.jwt";

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    AuthorizationHeader,
    Subprotocol,
    Query,
    Cookie,
}

/// The token and where it came from, or `None` when the request carries none.
pub fn token_from_request(req: &HttpRequest, cookie_name: &str) -> Option<(String, TokenSource)> {
    if let Some(token) = bearer_token(req) {
        return Some((token, TokenSource::AuthorizationHeader));
    }
    if let Some(token) = subprotocol_token(req) {
        return Some((token, TokenSource::Subprotocol));
    }
    if let Some(token) = query_token(req.query_string()) {
        return Some((token, TokenSource::Query));
    }
    req.cookie(cookie_name)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty())
        .map(|token| (token, TokenSource::Cookie))
}

fn bearer_token(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_string())
}

/// `Sec-WebSocket-Protocol: chronus.jwt, <jwt>`: the entry right after the marker.
fn subprotocol_token(req: &HttpRequest) -> Option<String> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let marker = offered.iter().position(|p| *p == JWT_SUBPROTOCOL)?;
    offered
        .get(marker + 1)
        .filter(|t| !t.is_empty())
        .map(|t| t.to_string())
}

fn query_token(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the request's `Origin` may use the gateway. Requests without an
/// Origin are not from a browser and are not subject to the list.
pub fn origin_allowed(req: &HttpRequest, allowed: Option<&[String]>) -> bool {
    let Some(allowed) = allowed else {
        return true;
    };
    match req.headers().get(header::ORIGIN) {
        None => true,
        Some(origin) => match origin.to_str() {
            Ok(origin) => {
                let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
                allowed.contains(&origin)
            }
            Err(_) => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn header_wins_over_every_other_source() {
        let req = TestRequest::default()
            .uri("/x?token=q")
            .insert_header((header::AUTHORIZATION, "Bearer h"))
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "chronus.jwt, s"))
            .to_http_request();
        assert_eq!(
            token_from_request(&req, "chronus_token"),
            Some(("h".into(), TokenSource::AuthorizationHeader))
        );
    }

    #[test]
    fn subprotocol_then_query_then_cookie() {
        let req = TestRequest::default()
            .uri("/x?token=q")
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "chronus.jwt, s"))
            .to_http_request();
        assert_eq!(
            token_from_request(&req, "c"),
            Some(("s".into(), TokenSource::Subprotocol))
        );
        let req = TestRequest::default()
            .uri("/x?a=1&token=q%2Bx")
            .to_http_request();
        assert_eq!(
            token_from_request(&req, "c"),
            Some(("q+x".into(), TokenSource::Query))
        );
        let req = TestRequest::default()
            .insert_header((header::COOKIE, "other=1; chronus_token=k"))
            .to_http_request();
        assert_eq!(
            token_from_request(&req, "chronus_token"),
            Some(("k".into(), TokenSource::Cookie))
        );
    }

    #[test]
    fn no_token_anywhere() {
        let req = TestRequest::default()
            .uri("/x?token=")
            .insert_header((header::AUTHORIZATION, "Basic abc"))
            .insert_header((header::SEC_WEBSOCKET_PROTOCOL, "chronus.jwt"))
            .to_http_request();
        assert_eq!(token_from_request(&req, "chronus_token"), None);
    }

    #[test]
    fn origin_list_applies_to_browsers_only() {
        let allowed = vec!["https://app.chronus.test".to_string()];
        let none = TestRequest::default().to_http_request();
        assert!(origin_allowed(&none, Some(&allowed)));
        let good = TestRequest::default()
            .insert_header((header::ORIGIN, "https://APP.chronus.test/"))
            .to_http_request();
        assert!(origin_allowed(&good, Some(&allowed)));
        let bad = TestRequest::default()
            .insert_header((header::ORIGIN, "https://evil.test"))
            .to_http_request();
        assert!(!origin_allowed(&bad, Some(&allowed)));
        assert!(origin_allowed(&bad, None));
    }
}
