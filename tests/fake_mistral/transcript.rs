//! What the fake Mistral "hears": deterministic texts derived from the audio
//! (its byte count), so a test can assert a transcript exactly, and the
//! modes in which Mistral may deliver them.

use serde_json::{json, Value};

/// How the fake delivers text (REAL-PEERS.md 4: Mistral's documented flow is
/// deltas then `transcription.done`, with few or no segments).
///
/// In every mode each [`super::FakeMistralOptions::segment_secs`] of audio is
/// one utterance, whose text is [`segment_text`], announced by the deltas of
/// [`segment_deltas`]; all deltas of a session concatenated are exactly
/// `transcription.done`'s `text` ([`full_text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// "Deltas + done only": no `transcription.segment` at all, `done`
    /// without `segments`; the text exists only as deltas and `done.text`.
    DeltasThenDone,
    /// "Segments": every utterance's deltas are followed by a
    /// `transcription.segment`, the short last one (at `input_audio.end`)
    /// too; `done.segments` lists them.
    Segments,
    /// "Trailing deltas after the last segment": like [`Mode::Segments`], but
    /// the short last utterance is only deltas (and part of `done.text`), never
    /// a segment.
    TrailingDeltas,
}

impl Mode {
    /// Whether a full utterance ends with a `transcription.segment`.
    pub fn segments_full_utterances(self) -> bool {
        self != Mode::DeltasThenDone
    }

    /// Whether the short last utterance (at `input_audio.end`) is a segment.
    pub fn segments_the_last_utterance(self) -> bool {
        self == Mode::Segments
    }

    /// Whether `transcription.done` lists the segments sent.
    pub fn done_lists_segments(self) -> bool {
        self != Mode::DeltasThenDone
    }
}

/// The text of utterance `index` (0-based) made of `bytes` bytes of audio.
pub fn segment_text(index: usize, bytes: usize) -> String {
    format!("segment {index} of {bytes} bytes")
}

/// The deltas that announce utterance `index`. Concatenated over a session
/// they are [`full_text`]: every utterance after the first starts with the
/// space that separates it from the one before.
pub fn segment_deltas(index: usize, bytes: usize) -> Vec<String> {
    let first = if index == 0 { "segment" } else { " segment" };
    vec![
        first.to_owned(),
        format!(" {index} of"),
        format!(" {bytes} bytes"),
    ]
}

/// `transcription.done`'s `text` for utterances of these byte counts.
pub fn full_text(utterance_bytes: &[usize]) -> String {
    utterance_bytes
        .iter()
        .enumerate()
        .map(|(index, bytes)| segment_text(index, *bytes))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One `transcription.segment` the fake sent, kept for `done.segments`.
#[derive(Debug, Clone)]
pub struct SentSegment {
    pub text: String,
    pub start: f64,
    pub end: f64,
}

impl SentSegment {
    /// The event announcing it.
    pub fn event(&self) -> Value {
        json!({"type": "transcription.segment", "text": self.text, "start": self.start, "end": self.end, "speaker_id": null})
    }

    /// Its entry in `done.segments` (the SDKs' `TranscriptionSegmentChunk`).
    pub fn chunk(&self) -> Value {
        json!({"type": "transcription_segment", "text": self.text, "start": self.start, "end": self.end})
    }
}
