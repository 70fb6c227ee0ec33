//! The per-session replay buffer that lets a mux session survive a dropped
//! thoth socket without losing audio (PROTOCOL.md 3.1, "Resume").
//!
//! It keeps the audio sent since the `end` of the session's last final result.
//! After a reconnect the session restarts at that point (`offset_ms`) and the
//! kept audio is sent again, so thoth re-transcribes exactly what had no final
//! result yet: no result is lost, none repeated.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::audio::AudioFormat;

/// Audio positions are counted in samples from the start of the session.
pub struct ReplayBuffer {
    bytes_per_sample: u64,
    sample_rate: u64,
    max_samples: u64,
    chunks: VecDeque<Bytes>,
    /// Position of the first kept sample.
    start_sample: u64,
    /// Samples kept.
    kept_samples: u64,
    /// End of the last final result: where a resumed session restarts.
    confirmed_sample: u64,
}

impl ReplayBuffer {
    pub fn new(format: AudioFormat, max_secs: u64) -> ReplayBuffer {
        ReplayBuffer {
            bytes_per_sample: format.encoding.bytes_per_sample() as u64,
            sample_rate: u64::from(format.sample_rate),
            max_samples: max_secs * u64::from(format.sample_rate),
            chunks: VecDeque::new(),
            start_sample: 0,
            kept_samples: 0,
            confirmed_sample: 0,
        }
    }

    /// Keeps a chunk (a whole number of samples). When the bound is exceeded
    /// the oldest audio is dropped, which makes the session unresumable until
    /// a final result covers the gap.
    pub fn push(&mut self, audio: Bytes) {
        self.kept_samples += audio.len() as u64 / self.bytes_per_sample;
        self.chunks.push_back(audio);
        if self.kept_samples > self.max_samples {
            let excess = self.kept_samples - self.max_samples;
            self.drop_front(excess);
        }
    }

    /// A final result ended at `end_secs`: its audio no longer needs keeping.
    pub fn confirm(&mut self, end_secs: f64) {
        if !(end_secs.is_finite() && end_secs >= 0.0) {
            return;
        }
        let end_sample = (end_secs * self.sample_rate as f64).round() as u64;
        let end_sample = end_sample.min(self.start_sample + self.kept_samples);
        if end_sample <= self.confirmed_sample {
            return;
        }
        self.confirmed_sample = end_sample;
        if end_sample > self.start_sample {
            self.drop_front(end_sample - self.start_sample);
        }
    }

    fn drop_front(&mut self, mut samples: u64) {
        samples = samples.min(self.kept_samples);
        self.start_sample += samples;
        self.kept_samples -= samples;
        let mut bytes = samples * self.bytes_per_sample;
        while bytes > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let len = front.len() as u64;
            if len <= bytes {
                bytes -= len;
                self.chunks.pop_front();
            } else {
                *front = front.slice(bytes as usize..);
                bytes = 0;
            }
        }
    }

    /// Whether every sample since the last final result is still here.
    pub fn resumable(&self) -> bool {
        self.start_sample <= self.confirmed_sample
    }

    /// The `offset_ms` a resumed session starts at.
    pub fn resume_offset_ms(&self) -> u64 {
        self.start_sample * 1000 / self.sample_rate
    }

    /// The kept audio, oldest first.
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.chunks.iter()
    }

    /// Bytes held (for the memory bound).
    pub fn kept_bytes(&self) -> u64 {
        self.kept_samples * self.bytes_per_sample
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Encoding;

    fn buffer(max_secs: u64) -> ReplayBuffer {
        ReplayBuffer::new(
            AudioFormat {
                encoding: Encoding::S16le,
                sample_rate: 1000,
            },
            max_secs,
        )
    }

    fn kept(buffer: &ReplayBuffer) -> Vec<u8> {
        buffer.chunks().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn keeps_only_audio_after_the_last_final() {
        let mut b = buffer(10);
        let audio: Vec<u8> = (0..4000u32).map(|i| i as u8).collect(); // 2 s of s16
        b.push(Bytes::from(audio[..3000].to_vec()));
        b.push(Bytes::from(audio[3000..].to_vec()));
        b.confirm(1.25); // 1250 samples = 2500 bytes
        assert_eq!(kept(&b), audio[2500..].to_vec());
        assert!(b.resumable());
        assert_eq!(b.resume_offset_ms(), 1250);
        b.confirm(1.0); // an older end changes nothing
        assert_eq!(b.kept_bytes(), 1500);
    }

    #[test]
    fn overflow_makes_it_unresumable_until_a_final_covers_the_gap() {
        let mut b = buffer(1);
        b.push(Bytes::from(vec![0u8; 1500 * 2]));
        assert_eq!(b.kept_bytes(), 2000, "bounded at 1 s");
        assert!(!b.resumable());
        b.confirm(1.5);
        assert!(b.resumable());
        assert_eq!(b.resume_offset_ms(), 1500);
        assert_eq!(b.kept_bytes(), 0);
    }

    #[test]
    fn a_final_beyond_the_audio_is_clamped() {
        let mut b = buffer(10);
        b.push(Bytes::from(vec![1u8; 200]));
        b.confirm(5.0);
        assert_eq!(b.kept_bytes(), 0);
        assert_eq!(b.resume_offset_ms(), 100);
        b.push(Bytes::from(vec![2u8; 20]));
        assert_eq!(kept(&b), vec![2u8; 20]);
    }
}
