//! Finding the token on a request (`token_from_request`, `origin_allowed`) and
//! the subprotocol the handshake answers with, for arbitrary header values and
//! query strings. The input is split on NUL bytes into: Authorization,
//! Sec-WebSocket-Protocol, Cookie, Origin, query, cookie name.
#![no_main]

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::Uri;
use actix_web::test::TestRequest;
use chronus_gateway::auth::{origin_allowed, token_from_request, JWT_SUBPROTOCOL};
use chronus_gateway::session::admission::SELECTABLE_SUBPROTOCOLS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|b| *b == 0);
    let mut req = TestRequest::get()
        .insert_header((header::UPGRADE, "websocket"))
        .insert_header((header::CONNECTION, "Upgrade"))
        .insert_header((header::SEC_WEBSOCKET_VERSION, "13"))
        .insert_header((header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="));
    let names: [HeaderName; 4] = [
        header::AUTHORIZATION,
        header::SEC_WEBSOCKET_PROTOCOL,
        header::COOKIE,
        header::ORIGIN,
    ];
    for name in names {
        if let Some(value) = parts.next().and_then(|v| HeaderValue::from_bytes(v).ok()) {
            req = req.insert_header((name, value));
        }
    }
    if let Some(query) = parts.next().and_then(|q| std::str::from_utf8(q).ok()) {
        let uri = format!("/api/audio/transcribe?{query}");
        // TestRequest panics on an invalid URI; a server never sees one.
        if uri.parse::<Uri>().is_ok() {
            req = req.uri(&uri);
        }
    }
    let cookie_name = parts
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .unwrap_or("chronus_token");
    let req = req.to_http_request();

    if let Some((token, _source)) = token_from_request(&req, cookie_name) {
        assert!(!token.is_empty());
    }
    let allowed = vec!["https://app.chronus.test".to_string()];
    let _ = origin_allowed(&req, Some(&allowed));
    // The gateway selects only the marker, never the token after it.
    let response = actix_web_actors::ws::handshake_with_protocols(&req, SELECTABLE_SUBPROTOCOLS)
        .map(|mut r| r.finish());
    if let Ok(response) = response {
        if let Some(selected) = response.headers().get(header::SEC_WEBSOCKET_PROTOCOL) {
            assert_eq!(selected, JWT_SUBPROTOCOL);
        }
    }
});
