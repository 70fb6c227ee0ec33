//! What a run measured (`LoadResult`, `Failures`) and each session's frames
//! awaiting their acks (`Track`): the checks every frame goes through.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::audio::{fill_frame, Ack, RunningChecksum};
use crate::load::{Timeline, HIST_MAX_US, MAX_ERROR_SAMPLES, MAX_ERROR_SAMPLES_PER_SESSION};
use crate::profile::Profile;

/// Every way a session can fail its checks.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Failures {
    /// TCP connect or WebSocket handshake failed or timed out.
    pub connect: u64,
    /// No `ready` within the connect timeout.
    pub no_ready: u64,
    /// The gateway (or thoth) sent an `error`.
    pub error_event: u64,
    /// An ack whose byte count or checksum is not the next expected one.
    pub mismatched_ack: u64,
    /// An ack when no frame was outstanding.
    pub unexpected_ack: u64,
    /// Frames never acknowledged (at the end).
    pub lost_ack: u64,
    /// Frames skipped: a later frame of the session was acknowledged instead.
    pub skipped_frame: u64,
    /// No `done` (or `session.done`) after `end`.
    pub no_done: u64,
    /// The socket closed before the session finished.
    pub closed_early: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.connect
            + self.no_ready
            + self.error_event
            + self.mismatched_ack
            + self.unexpected_ack
            + self.lost_ack
            + self.skipped_frame
            + self.no_done
            + self.closed_early
    }

    pub fn add(&mut self, o: &Failures) {
        self.connect += o.connect;
        self.no_ready += o.no_ready;
        self.error_event += o.error_event;
        self.mismatched_ack += o.mismatched_ack;
        self.unexpected_ack += o.unexpected_ack;
        self.lost_ack += o.lost_ack;
        self.skipped_frame += o.skipped_frame;
        self.no_done += o.no_done;
        self.closed_early += o.closed_early;
    }
}

/// What one run measured at the client side.
pub struct LoadResult {
    /// Frame sent → its ack back, µs, frames sent inside the window.
    pub latency: Histogram<u64>,
    /// How late a frame left versus its schedule, µs (load generator health).
    pub send_lag: Histogram<u64>,
    /// Connect mode: connect → `ready`, µs.
    pub connect_latency: Histogram<u64>,
    /// Sessions refused at capacity (`refusal.rs`): connect started → the
    /// refusal's error envelope, µs.
    pub refuse_latency: Histogram<u64>,
    pub frames_in_window: u64,
    pub bytes_in_window: u64,
    /// Acks received inside the window, and the audio bytes they cover.
    pub acked_frames_in_window: u64,
    pub acked_bytes_in_window: u64,
    pub frames_total: u64,
    pub acks_total: u64,
    pub sessions_ready: u64,
    /// Sessions refused at capacity before `ready`. In an overload figure
    /// they are expected; in any other they are also counted as `no_ready`.
    pub refused: u64,
    /// Sessions that became ready only after the window started.
    pub ready_late: u64,
    /// Connect mode: sessions that reached `ready` inside the window.
    pub connects_in_window: u64,
    pub failures: Failures,
    pub errors: Vec<String>,
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

impl Default for LoadResult {
    fn default() -> Self {
        LoadResult {
            latency: histogram(),
            send_lag: histogram(),
            connect_latency: histogram(),
            refuse_latency: histogram(),
            frames_in_window: 0,
            bytes_in_window: 0,
            acked_frames_in_window: 0,
            acked_bytes_in_window: 0,
            frames_total: 0,
            acks_total: 0,
            sessions_ready: 0,
            refused: 0,
            ready_late: 0,
            connects_in_window: 0,
            failures: Failures::default(),
            errors: Vec::new(),
        }
    }
}

impl LoadResult {
    pub fn merge(&mut self, o: LoadResult) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.send_lag.add(&o.send_lag);
        let _ = self.connect_latency.add(&o.connect_latency);
        let _ = self.refuse_latency.add(&o.refuse_latency);
        self.frames_in_window += o.frames_in_window;
        self.bytes_in_window += o.bytes_in_window;
        self.acked_frames_in_window += o.acked_frames_in_window;
        self.acked_bytes_in_window += o.acked_bytes_in_window;
        self.frames_total += o.frames_total;
        self.acks_total += o.acks_total;
        self.sessions_ready += o.sessions_ready;
        self.refused += o.refused;
        self.ready_late += o.ready_late;
        self.connects_in_window += o.connects_in_window;
        self.failures.add(&o.failures);
        for e in o.errors {
            if self.errors.len() < MAX_ERROR_SAMPLES {
                self.errors.push(e);
            }
        }
    }

    /// Keeps a sample of error texts: a few per session, so that one
    /// session's many errors do not hide other kinds.
    pub fn error(&mut self, text: String) {
        if self.errors.len() >= MAX_ERROR_SAMPLES {
            return;
        }
        let session = text.split(':').next().unwrap_or_default().to_string();
        let same = self
            .errors
            .iter()
            .filter(|e| e.split(':').next() == Some(session.as_str()))
            .count();
        if same < MAX_ERROR_SAMPLES_PER_SESSION {
            self.errors.push(text);
        }
    }
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, HIST_MAX_US)
}

/// A frame sent and not yet acknowledged.
pub struct Pending {
    pub frame: u64,
    pub bytes: u64,
    pub checksum: u64,
    pub sent_at: Instant,
    pub in_window: bool,
}

/// One session's audio and the acks it expects, in order.
pub struct Track {
    pub session: u32,
    pub frame_bytes: usize,
    /// One ack may cover every frame up to the one it names (chronus profile).
    pub cumulative: bool,
    pub frames: u64,
    pub bytes: u64,
    pub checksum: RunningChecksum,
    pub pending: VecDeque<Pending>,
    /// Audio bytes of frames that never reached thoth.
    pub lost_bytes: u64,
    pub done: bool,
    /// `end` was sent: a cumulative ack now may be thoth's flush of a partial
    /// window, which waited for `end`, not for the relay.
    pub ended: bool,
}

impl Track {
    pub fn new(session: u32, profile: Profile) -> Track {
        Track {
            session,
            frame_bytes: profile.frame_bytes(),
            cumulative: profile.cumulative_acks(),
            frames: 0,
            bytes: 0,
            checksum: RunningChecksum::default(),
            pending: VecDeque::new(),
            lost_bytes: 0,
            done: false,
            ended: false,
        }
    }

    /// The next frame, with `prefix` (the mux uuid, or nothing) before the audio.
    pub fn next_frame(&mut self, prefix: &[u8], tl: &Timeline, result: &mut LoadResult) -> Bytes {
        let mut frame = vec![0u8; prefix.len() + self.frame_bytes];
        frame[..prefix.len()].copy_from_slice(prefix);
        fill_frame(self.session, self.frames, &mut frame[prefix.len()..]);
        self.checksum.update(&frame[prefix.len()..]);
        self.frames += 1;
        self.bytes += self.frame_bytes as u64;
        let now = Instant::now();
        let in_window = now >= tl.window_start() && now < tl.window_end();
        if in_window {
            result.frames_in_window += 1;
            result.bytes_in_window += self.frame_bytes as u64;
        }
        result.frames_total += 1;
        self.pending.push_back(Pending {
            frame: self.frames - 1,
            bytes: self.bytes,
            checksum: self.checksum.0,
            sent_at: now,
            in_window,
        });
        Bytes::from(frame)
    }

    /// Checks an ack against the oldest outstanding frame.
    pub fn on_ack(&mut self, ack: Ack, tl: &Timeline, result: &mut LoadResult) {
        let now = Instant::now();
        result.acks_total += 1;
        let in_window = now >= tl.window_start() && now < tl.window_end();
        // A cumulative ack (a final result for a ~3 s window) covers every
        // frame up to the one it names; its byte count and checksum, checked
        // below, cover all of them, so nothing lost goes unnoticed.
        if self.cumulative && ack.session == self.session {
            while self.pending.len() > 1 && self.pending[0].frame < ack.frame {
                self.pending.pop_front();
                if in_window {
                    result.acked_frames_in_window += 1;
                    result.acked_bytes_in_window += self.frame_bytes as u64;
                }
            }
        }
        // An ack naming a later frame of this session: the frames before it
        // never reached thoth. Count them once, and go on checking the rest
        // (thoth still checks every frame's content; from here on the client
        // checks byte counts and frame numbers, as the checksum includes the
        // lost audio).
        if ack.session == self.session {
            while self.pending.len() > 1 && self.pending[0].frame < ack.frame {
                let lost = self.pending.pop_front().expect("checked non-empty");
                self.lost_bytes += self.frame_bytes as u64;
                result.failures.skipped_frame += 1;
                result.error(format!(
                    "session {}: frame {} never reached thoth (the next ack names frame {})",
                    self.session, lost.frame, ack.frame
                ));
            }
        }
        let Some(expected) = self.pending.pop_front() else {
            result.failures.unexpected_ack += 1;
            result.error(format!(
                "session {}: ack for {} bytes with nothing outstanding",
                self.session, ack.bytes
            ));
            return;
        };
        let checksum_ok = self.lost_bytes > 0 || expected.checksum == ack.checksum;
        if expected.bytes - self.lost_bytes != ack.bytes
            || !checksum_ok
            || (ack.session, ack.frame) != (self.session, expected.frame)
        {
            result.failures.mismatched_ack += 1;
            result.error(format!(
                "session {}: ack of {} bytes ending with session {} frame {}, expected {} bytes ending with frame {} (checksum {})",
                self.session,
                ack.bytes,
                ack.session,
                ack.frame,
                expected.bytes - self.lost_bytes,
                expected.frame,
                if checksum_ok { "equal" } else { "differs" },
            ));
        }
        // Chronus profile: the latency is that of a ~3 s window's final; the
        // flush at `end` of a partial window is checked, not timed.
        if expected.in_window && !(self.cumulative && self.ended) {
            let _ = result.latency.record(micros(now - expected.sent_at));
        }
        if in_window {
            result.acked_frames_in_window += 1;
            result.acked_bytes_in_window += self.frame_bytes as u64;
        }
    }

    /// At the end: whatever is still outstanding was lost.
    pub fn finish(&mut self, result: &mut LoadResult) {
        if !self.pending.is_empty() {
            result.failures.lost_ack += self.pending.len() as u64;
            result.error(format!(
                "session {}: {} frame(s) never acknowledged",
                self.session,
                self.pending.len()
            ));
            self.pending.clear();
        }
        if !self.done {
            result.failures.no_done += 1;
            result.error(format!("session {}: no done after end", self.session));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::FRAME_BYTES;
    use crate::load::{LoadPlan, Mode};
    use crate::profile::CHRONUS_FRAME_BYTES;

    fn plan() -> LoadPlan {
        LoadPlan {
            mode: Mode::Realtime,
            profile: Profile::Realtime,
            sessions: 1,
            seconds: 1.0,
            ramp: Duration::ZERO,
            warmup: Duration::ZERO,
            client_threads: 1,
            window: 1,
            concurrency: 1,
            overload: false,
        }
    }

    /// The ack thoth would send after `frames` of `session`.
    fn ack_after(session: u32, frames: std::ops::Range<u64>) -> Ack {
        ack_after_sized(session, frames, FRAME_BYTES)
    }

    fn ack_after_sized(session: u32, frames: std::ops::Range<u64>, frame_bytes: usize) -> Ack {
        let mut sum = RunningChecksum::default();
        let mut buf = vec![0; frame_bytes];
        for f in frames.clone() {
            fill_frame(session, f, &mut buf);
            sum.update(&buf);
        }
        Ack {
            bytes: (frames.end - frames.start) * frame_bytes as u64,
            checksum: sum.0,
            session,
            frame: frames.end - 1,
        }
    }

    #[tokio::test]
    async fn exact_acks_pass_and_a_skipped_frame_counts_once() {
        let tl = Timeline::new(&plan());
        let mut result = LoadResult::default();
        let mut track = Track::new(3, Profile::Realtime);
        for _ in 0..3 {
            track.next_frame(&[], &tl, &mut result);
        }
        track.on_ack(ack_after(3, 0..1), &tl, &mut result);
        assert_eq!(result.failures.total(), 0);

        let mut lossy = Track::new(3, Profile::Realtime);
        for _ in 0..3 {
            lossy.next_frame(&[], &tl, &mut result);
        }
        // Frame 0 never reached thoth: thoth's acks cover frames 1.. only.
        lossy.on_ack(ack_after(3, 1..2), &tl, &mut result);
        lossy.on_ack(ack_after(3, 1..3), &tl, &mut result);
        assert_eq!(result.failures.skipped_frame, 1);
        assert_eq!(result.failures.total(), 1);

        // Another session's ack is cross-talk.
        track.on_ack(ack_after(4, 0..2), &tl, &mut result);
        assert_eq!(result.failures.mismatched_ack, 1);
    }

    #[tokio::test]
    async fn a_window_final_covers_its_frames_and_a_lost_frame_shows() {
        let tl = Timeline::new(&plan());
        let mut result = LoadResult::default();
        let mut track = Track::new(5, Profile::Chronus);
        for _ in 0..12 {
            track.next_frame(&[], &tl, &mut result);
        }
        track.on_ack(
            ack_after_sized(5, 0..12, CHRONUS_FRAME_BYTES),
            &tl,
            &mut result,
        );
        assert_eq!(result.failures.total(), 0);
        assert!(track.pending.is_empty());

        // Thoth never got frame 0: its final's byte count is one frame short.
        let mut lossy = Track::new(5, Profile::Chronus);
        for _ in 0..12 {
            lossy.next_frame(&[], &tl, &mut result);
        }
        lossy.on_ack(
            ack_after_sized(5, 1..12, CHRONUS_FRAME_BYTES),
            &tl,
            &mut result,
        );
        assert_eq!(result.failures.mismatched_ack, 1);
    }
}
