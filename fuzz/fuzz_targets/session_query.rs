//! The WebSocket query string (`parse_session_query`).
#![no_main]

use chronus_gateway::audio::SAMPLE_RATES;
use chronus_gateway::session::routes::parse_session_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|query: &str| {
    if let Ok(request) = parse_session_query(query) {
        assert!(SAMPLE_RATES.contains(&request.format.sample_rate));
    }
});
