//! A thoth text frame (`MuxEvent::parse`), and the binary audio frame built
//! from the same bytes (`audio_frame`).
#![no_main]

use chronus_gateway::wire::thoth_mux::{audio_frame, MuxEvent};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = MuxEvent::parse(text);
    }
    if data.len() >= 16 {
        let id = Uuid::from_slice(&data[..16]).expect("16 bytes");
        let frame = audio_frame(&id, &data[16..]);
        assert_eq!(&frame[..], data);
    }
});
