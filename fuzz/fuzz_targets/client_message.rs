//! A browser text frame: `ClientMessage::parse`, then, for audio, the base64
//! decoding and the whole-sample check a text audio frame goes through.
#![no_main]

use chronus_gateway::audio::{decode_base64_audio, AudioFormat, Encoding};
use chronus_gateway::error::ErrorCode;
use chronus_gateway::wire::browser::ClientMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ClientMessage::parse(text) {
        Ok(ClientMessage::Audio { data }) => match decode_base64_audio(&data) {
            Ok(audio) => {
                assert!(audio.len() <= data.len() / 4 * 3);
                for encoding in [Encoding::F32le, Encoding::S16le] {
                    let format = AudioFormat {
                        encoding,
                        sample_rate: 16_000,
                    };
                    let whole = audio.len() % encoding.bytes_per_sample() == 0;
                    assert_eq!(format.check_whole_samples(&audio).is_ok(), whole);
                }
            }
            Err(error) => assert_eq!(error.code, ErrorCode::InvalidAudioFormat),
        },
        Ok(_) => {}
        Err(error) => assert_eq!(error.code, ErrorCode::BadMessage),
    }
});
