//! One mux session's audio bookkeeping on the dev thoth's side: whole
//! seconds become finals with exact timestamps, the rest stays pending.

use super::{describe_audio, Encoding};

/// One open session's audio bookkeeping.
pub(super) struct MuxSession {
    pub(super) encoding: Encoding,
    pub(super) sample_rate: u32,
    pub(super) offset_ms: u64,
    /// Samples already covered by final results.
    pub(super) finalized_samples: u64,
    /// Samples of the second in progress.
    pub(super) pending: Vec<f32>,
}

/// A final result, before it is put on the wire.
pub(super) struct FinalResult {
    pub(super) start: f64,
    pub(super) end: f64,
    pub(super) text: String,
}

impl MuxSession {
    /// Seconds of the session's audio (offset included) at sample `sample`.
    pub(super) fn seconds_at(&self, sample: u64) -> f64 {
        self.offset_ms as f64 / 1000.0 + sample as f64 / f64::from(self.sample_rate)
    }

    /// `floor(seconds_at(sample))`, in exact integer arithmetic.
    pub(super) fn whole_seconds_at(&self, sample: u64) -> u64 {
        let rate = u128::from(self.sample_rate);
        let numerator = u128::from(self.offset_ms) * rate + u128::from(sample) * 1000;
        // Fits: offset_ms and sample counts are far below 2^64 / 1000.
        u64::try_from(numerator / (1000 * rate)).unwrap_or(u64::MAX)
    }

    /// Turns `samples` (the next audio after `finalized_samples`) into a final.
    pub(super) fn finalize(&mut self, samples: &[f32]) -> FinalResult {
        let first = self.finalized_samples;
        self.finalized_samples += samples.len() as u64;
        FinalResult {
            start: self.seconds_at(first),
            end: self.seconds_at(self.finalized_samples),
            text: describe_audio(self.whole_seconds_at(first), samples),
        }
    }

    /// Finals for every whole second pending.
    pub(super) fn take_whole_seconds(&mut self) -> Vec<FinalResult> {
        let per_second = self.sample_rate as usize;
        let mut finals = Vec::new();
        while self.pending.len() >= per_second {
            let second: Vec<f32> = self.pending.drain(..per_second).collect();
            finals.push(self.finalize(&second));
        }
        finals
    }

    /// The final for the partial second still pending, if any (`session.end`).
    pub(super) fn take_rest(&mut self) -> Option<FinalResult> {
        if self.pending.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.pending);
        Some(self.finalize(&rest))
    }

    /// The whole current hypothesis while a second is in progress.
    pub(super) fn interim_text(&self) -> String {
        format!(
            "listening {:.2}s",
            self.pending.len() as f64 / f64::from(self.sample_rate)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sample_rate: u32, offset_ms: u64) -> MuxSession {
        MuxSession {
            encoding: Encoding::F32le,
            sample_rate,
            offset_ms,
            finalized_samples: 0,
            pending: Vec::new(),
        }
    }

    #[test]
    fn finals_cover_whole_seconds_and_keep_the_rest_pending() {
        let mut s = session(8000, 0);
        s.pending = vec![0.5; 8000 * 2 + 100];
        let finals = s.take_whole_seconds();
        assert_eq!(finals.len(), 2);
        assert_eq!((finals[1].start, finals[1].end), (1.0, 2.0));
        assert_eq!(finals[1].text, describe_audio(1, &[0.5; 8000]));
        assert_eq!(s.pending.len(), 100);
        assert_eq!(s.interim_text(), "listening 0.01s");
        let rest = s.take_rest().expect("100 samples pending");
        assert_eq!((rest.start, rest.end), (2.0, 2.0125));
        assert!(s.take_rest().is_none());
    }

    #[test]
    fn offset_shifts_timestamps_and_the_index_is_floor_of_start() {
        let mut s = session(16000, 2500);
        s.pending = vec![0.0; 16000];
        let finals = s.take_whole_seconds();
        assert_eq!((finals[0].start, finals[0].end), (2.5, 3.5));
        assert!(finals[0].text.starts_with("second 2:"));
    }

    #[test]
    fn whole_seconds_are_exact_even_where_floats_are_not() {
        let s = session(48000, 2999);
        assert_eq!(s.whole_seconds_at(48), 3);
        assert_eq!(s.whole_seconds_at(47), 2);
    }
}
