//! Property tests for what the gateway reads from thoth: mux frames parse to
//! an error or to exactly what was sent, and the replay buffer keeps exactly
//! the audio it must (PROTOCOL.md 3.1).

#[path = "common/hostile.rs"]
mod hostile;

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use chronus_gateway::audio::{AudioFormat, Encoding};
use chronus_gateway::upstream::thoth::resume::ReplayBuffer;
use chronus_gateway::wire::thoth_mux::{audio_frame, MuxEvent};

use hostile::*;

// ---- thoth mux frames --------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mux_event_parse_never_panics(text in json_ish()) {
        let _ = MuxEvent::parse(&text);
    }

    #[test]
    fn valid_mux_events_round_trip(
        id in uuid(),
        text in any::<String>(),
        is_final in any::<bool>(),
        span in prop::option::of((0u32..10_000_000, 0u32..10_000_000)),
        kind in 0..4u8,
        code in any::<String>(),
    ) {
        let session_id = id.hyphenated().to_string();
        let (frame, expected) = match kind {
            0 => {
                let mut frame = json!({"type": "transcription", "session_id": session_id, "text": text, "is_final": is_final});
                let (start, end) = match span {
                    Some((a, b)) => (Some(f64::from(a) / 1000.0), Some(f64::from(b) / 1000.0)),
                    None => (None, None),
                };
                if let (Some(start), Some(end)) = (start, end) {
                    frame["start"] = start.into();
                    frame["end"] = end.into();
                }
                (frame, MuxEvent::Transcription { session_id: id, text, is_final, start, end })
            }
            1 => (json!({"type": "session.done", "session_id": session_id}), MuxEvent::SessionDone { session_id: id }),
            2 => (
                json!({"type": "error", "session_id": session_id, "code": code, "message": text}),
                MuxEvent::Error { session_id: Some(id), code, message: text },
            ),
            _ => (
                json!({"type": "error", "code": code, "message": text}),
                MuxEvent::Error { session_id: None, code, message: text },
            ),
        };
        prop_assert_eq!(MuxEvent::parse(&frame.to_string()), Some(expected));
    }

    #[test]
    fn mux_events_with_a_malformed_session_id_are_skipped(
        id in "[0-9a-z-]{0,40}".prop_filter("not a uuid", |s| Uuid::parse_str(s).is_err()),
        kind in prop::sample::select(&["transcription", "session.done", "error"][..]),
    ) {
        let frame = json!({"type": kind, "session_id": id, "text": "a", "is_final": true});
        prop_assert_eq!(MuxEvent::parse(&frame.to_string()), None);
    }

    #[test]
    fn audio_frame_is_the_uuid_then_the_audio(id in uuid(), audio in prop::collection::vec(any::<u8>(), 0..2048)) {
        let frame = audio_frame(&id, &audio);
        prop_assert_eq!(frame.len(), 16 + audio.len());
        prop_assert_eq!(&frame[..16], id.as_bytes());
        prop_assert_eq!(&frame[16..], &audio[..]);
        prop_assert_eq!(Uuid::from_slice(&frame[..16]).unwrap(), id);
    }
}

// ---- the replay buffer -------------------------------------------------------------

#[derive(Debug, Clone)]
enum ReplayOp {
    /// Push this many whole samples.
    Push(u16),
    /// A final result ended at this many seconds (anything thoth may send).
    Confirm(f64),
}

fn replay_op() -> impl Strategy<Value = ReplayOp> {
    prop_oneof![
        3 => (0u16..2_000).prop_map(ReplayOp::Push),
        2 => (0u32..400_000).prop_map(|ms| ReplayOp::Confirm(f64::from(ms) / 1000.0)),
        1 => any::<f64>().prop_map(ReplayOp::Confirm),
        1 => prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, -1.0, 1e300][..])
            .prop_map(ReplayOp::Confirm),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A model of the buffer: positions in samples from the session's start.
    /// `start` is where the kept audio begins; it only moves forward, to the
    /// confirmed point or to what the bound forces out.
    #[test]
    fn replay_buffer_keeps_exactly_the_unconfirmed_suffix_within_its_bound(
        s16 in any::<bool>(),
        rate in prop::sample::select(&[8_000u32, 16_000, 44_100, 48_000][..]),
        max_secs in 0u64..3,
        ops in prop::collection::vec(replay_op(), 0..40),
    ) {
        let format = AudioFormat {
            encoding: if s16 { Encoding::S16le } else { Encoding::F32le },
            sample_rate: rate,
        };
        let bps = format.encoding.bytes_per_sample() as u64;
        let max_samples = max_secs * u64::from(rate);
        let mut buffer = ReplayBuffer::new(format, max_secs);
        let mut pushed: Vec<u8> = Vec::new();
        let mut confirmed = 0u64;
        let mut counter = 0u8;
        for op in ops {
            match op {
                ReplayOp::Push(samples) => {
                    let chunk: Vec<u8> = (0..u64::from(samples) * bps)
                        .map(|_| { counter = counter.wrapping_add(1); counter })
                        .collect();
                    pushed.extend_from_slice(&chunk);
                    buffer.push(Bytes::from(chunk));
                }
                ReplayOp::Confirm(end) => {
                    let total = pushed.len() as u64 / bps;
                    if end.is_finite() && end >= 0.0 {
                        // The nearest sample, never past the audio sent.
                        let end = ((end * f64::from(rate)).round() as u64).min(total);
                        confirmed = confirmed.max(end);
                    }
                    buffer.confirm(end);
                }
            }
            let total = pushed.len() as u64 / bps;
            let start = confirmed.max(total.saturating_sub(max_samples));
            let kept: Vec<u8> = buffer.chunks().flat_map(|c| c.iter().copied()).collect();

            prop_assert!(buffer.kept_bytes() <= max_samples * bps, "bounded");
            prop_assert_eq!(buffer.kept_bytes(), kept.len() as u64);
            prop_assert_eq!(&kept[..], &pushed[(start * bps) as usize..], "kept = suffix from start");
            prop_assert_eq!(buffer.resumable(), start == confirmed, "resumable iff no gap");
            if buffer.resumable() {
                prop_assert_eq!(&kept[..], &pushed[(confirmed * bps) as usize..]);
            }
            prop_assert_eq!(buffer.resume_offset_ms(), start * 1000 / u64::from(rate));
        }
    }
}
