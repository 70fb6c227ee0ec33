//! Resume: the per-session replay buffer that lets a mux session survive a
//! dropped thoth socket without losing audio (PROTOCOL.md 3.1, "Resume"),
//! and the decisions around it, as pure functions the mux actor calls.
//!
//! It keeps the audio sent since the `end` of the session's last final result.
//! After a reconnect the session restarts at that point (`offset_ms`) and the
//! kept audio is sent again, so thoth re-transcribes exactly what had no final
//! result yet: no result is lost, none repeated.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use crate::audio::AudioFormat;
use crate::upstream::audio_budget::{AudioBudget, AUDIO_BUDGET};
use crate::wire::thoth_mux::{self, MuxCommand};

/// Longest pause between reconnection attempts while sessions wait to resume.
pub const MAX_RESUME_BACKOFF: Duration = Duration::from_secs(2);

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
    /// Where the bytes kept count (the process's audio budget).
    budget: &'static AudioBudget,
}

impl ReplayBuffer {
    pub fn new(format: AudioFormat, max_secs: u64) -> ReplayBuffer {
        Self::counted_in(format, max_secs, &AUDIO_BUDGET)
    }

    /// [`Self::new`], counting what it keeps in `budget`.
    pub fn counted_in(
        format: AudioFormat,
        max_secs: u64,
        budget: &'static AudioBudget,
    ) -> ReplayBuffer {
        ReplayBuffer {
            budget,
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
        self.budget.hold(audio.len());
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
                self.budget.unhold(len as usize);
            } else {
                *front = front.slice(bytes as usize..);
                self.budget.unhold(bytes as usize);
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

impl Drop for ReplayBuffer {
    fn drop(&mut self) {
        self.budget.unhold(self.chunks.iter().map(Bytes::len).sum());
    }
}

/// What a resumed session queues on its new socket, in this order.
#[derive(Debug, PartialEq)]
pub struct ResumeFrames {
    /// `session.start` at the end of the last final result (`offset_ms`).
    pub start: String,
    /// The kept audio, as mux binary frames.
    pub audio: Vec<Bytes>,
    /// `session.end`, when the browser had ended the session already.
    pub end: Option<String>,
}

/// The frames that re-open a session, or `None` when its replay lost audio
/// (overflow) or it has none: the session cannot resume without a gap.
pub fn resume_frames(
    session_id: &Uuid,
    format: AudioFormat,
    replay: Option<&ReplayBuffer>,
    ending: bool,
) -> Option<ResumeFrames> {
    let replay = replay.filter(|r| r.resumable())?;
    let offset_ms = replay.resume_offset_ms();
    Some(ResumeFrames {
        start: MuxCommand::start(session_id, format, offset_ms).to_json(),
        audio: replay
            .chunks()
            .map(|chunk| thoth_mux::audio_frame(session_id, chunk))
            .collect(),
        end: ending.then(|| MuxCommand::End { session_id }.to_json()),
    })
}

/// Re-opens the waiting sessions in order on a socket that just opened;
/// `reopen` re-opens one and answers whether the socket survived it. True
/// when every one was re-opened: only then do they hear `THOTH_RESUMED`,
/// which pairs with their `THOTH_RECONNECTING`. On a loss it stops, and the
/// next socket resumes the rest.
pub fn reopen_all(resuming: &[Uuid], mut reopen: impl FnMut(Uuid) -> bool) -> bool {
    resuming.iter().all(|&session_id| reopen(session_id))
}

/// After a failed connection attempt: whether sessions waiting to resume
/// keep the actor trying. A thoth that is restarting may answer oddly for a
/// while; only a refusal of our credentials is final.
pub fn keep_retrying(resume_deadline: Option<Instant>, now: Instant, refused: bool) -> bool {
    resume_deadline.is_some_and(|deadline| now < deadline) && !refused
}

/// The pause before the next attempt while sessions wait to resume.
pub fn retry_pause(retry_base: Duration) -> Duration {
    (retry_base * 4).min(MAX_RESUME_BACKOFF)
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
    fn what_it_keeps_counts_in_the_budget_until_confirmed_or_dropped() {
        let budget: &'static AudioBudget = Box::leak(Box::new(AudioBudget::new(1 << 20)));
        let format = AudioFormat {
            encoding: Encoding::S16le,
            sample_rate: 1000,
        };
        let mut b = ReplayBuffer::counted_in(format, 10, budget);
        b.push(Bytes::from(vec![0; 3000]));
        b.push(Bytes::from(vec![0; 1000]));
        assert_eq!(budget.held(), 4000);
        b.confirm(1.25); // 2500 bytes confirmed: one chunk and part of it
        assert_eq!(budget.held(), 1500);
        assert_eq!(b.kept_bytes(), 1500);
        // Over its own bound the oldest audio goes, and is uncounted.
        let mut small = ReplayBuffer::counted_in(format, 1, budget);
        small.push(Bytes::from(vec![0; 1500]));
        small.push(Bytes::from(vec![0; 1500]));
        assert_eq!(budget.held(), 1500 + 2000);
        drop(small);
        drop(b);
        assert_eq!(budget.held(), 0, "dropped buffers give everything back");
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

    const ID: Uuid = Uuid::from_u128(0x6f1c1a5e_8d7b_4c1e_9a3f_0b2d4e6f8a10);

    fn format() -> AudioFormat {
        AudioFormat {
            encoding: Encoding::S16le,
            sample_rate: 1000,
        }
    }

    #[test]
    fn resume_restarts_at_the_last_final_and_replays_what_follows() {
        let mut b = buffer(10);
        b.push(Bytes::from(vec![1u8; 1000])); // 500 ms
        b.push(Bytes::from(vec![2u8; 1000])); // 500 ms
        b.confirm(0.75);
        let frames = resume_frames(&ID, format(), Some(&b), false).unwrap();
        assert!(
            frames.start.contains(r#""offset_ms":750"#),
            "{}",
            frames.start
        );
        assert!(frames.start.contains(r#""type":"session.start""#));
        let audio: Vec<u8> = frames.audio.iter().flat_map(|f| f[16..].to_vec()).collect();
        assert_eq!(audio, vec![2u8; 500]);
        assert!(frames.audio.iter().all(|f| f[..16] == *ID.as_bytes()));
        assert_eq!(frames.end, None);
    }

    #[test]
    fn an_ended_session_resumes_with_its_end_after_the_replay() {
        let b = buffer(10);
        let frames = resume_frames(&ID, format(), Some(&b), true).unwrap();
        assert!(frames.start.contains(r#""offset_ms":0"#));
        assert!(frames.audio.is_empty());
        assert_eq!(
            frames.end.as_deref(),
            Some(r#"{"type":"session.end","session_id":"6f1c1a5e-8d7b-4c1e-9a3f-0b2d4e6f8a10"}"#)
        );
    }

    #[test]
    fn an_overflowed_replay_makes_the_session_unavailable() {
        let mut b = buffer(1);
        b.push(Bytes::from(vec![0u8; 2 * 1500])); // 1.5 s in a 1 s buffer
        assert_eq!(resume_frames(&ID, format(), Some(&b), false), None);
        assert_eq!(resume_frames(&ID, format(), None, false), None);
    }

    #[test]
    fn resumed_is_announced_only_after_every_session_reopened() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];
        let mut reopened = Vec::new();
        assert!(reopen_all(&ids, |id| {
            reopened.push(id);
            true
        }));
        assert_eq!(reopened, ids);
    }

    #[test]
    fn a_socket_lost_mid_resume_announces_nothing_and_stops() {
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3)];
        let mut reopened = Vec::new();
        // The socket drops while the second session is re-opened.
        assert!(!reopen_all(&ids, |id| {
            reopened.push(id);
            reopened.len() < 2
        }));
        assert_eq!(reopened, ids[..2]);
    }

    #[test]
    fn retrying_lasts_until_the_deadline_unless_refused() {
        let now = Instant::now();
        let deadline = Some(now + Duration::from_secs(5));
        assert!(keep_retrying(deadline, now, false));
        assert!(!keep_retrying(deadline, now, true));
        assert!(!keep_retrying(
            deadline,
            now + Duration::from_secs(5),
            false
        ));
        assert!(!keep_retrying(None, now, false));
        assert_eq!(
            retry_pause(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert_eq!(retry_pause(Duration::from_secs(1)), MAX_RESUME_BACKOFF);
    }
}
