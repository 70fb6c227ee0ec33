//! The two traffic profiles: how big a browser's frames are, how often it
//! sends them, and how often the fake thoth answers.

use std::time::Duration;

use crate::audio::{FRAME_BYTES, FRAME_INTERVAL, SAMPLE_RATE};

/// Audio bytes per second (f32le mono at 16 kHz), both profiles.
pub const BYTES_PER_SECOND: u64 = SAMPLE_RATE as u64 * 4;
/// chronus's frontends: 4,096-sample f32 frames (16,384 bytes) every 256 ms.
pub const CHRONUS_FRAME_BYTES: usize = 4096 * 4;
pub const CHRONUS_FRAME_INTERVAL: Duration = Duration::from_millis(256);
/// Today's thoth finalises about every 3 s of a session's audio and says
/// nothing in between (REAL-PEERS.md 2–3).
pub const CHRONUS_FINAL_EVERY_BYTES: u64 = 3 * BYTES_PER_SECOND;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// 20 ms frames, each answered by an interim or final result.
    Realtime,
    /// 256 ms frames; one final result per ~3 s window of a session's audio.
    Chronus,
}

/// How the fake thoth answers a session's audio.
#[derive(Debug, Clone, Copy)]
pub struct ThothReplies {
    /// An interim result for every frame that does not complete a final.
    pub every_frame: bool,
    /// A final result once this many bytes since the last one have arrived.
    pub final_every_bytes: u64,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Realtime => "realtime",
            Profile::Chronus => "chronus",
        }
    }

    pub fn parse(s: &str) -> Option<Profile> {
        [Profile::Realtime, Profile::Chronus]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    pub fn frame_bytes(self) -> usize {
        match self {
            Profile::Realtime => FRAME_BYTES,
            Profile::Chronus => CHRONUS_FRAME_BYTES,
        }
    }

    /// How often a real-time browser sends a frame.
    pub fn frame_interval(self) -> Duration {
        match self {
            Profile::Realtime => FRAME_INTERVAL,
            Profile::Chronus => CHRONUS_FRAME_INTERVAL,
        }
    }

    /// Whether one ack may cover several frames (only finals are sent).
    pub fn cumulative_acks(self) -> bool {
        self == Profile::Chronus
    }

    /// The fake thoth's answers; `final_every_frames` (`--final-every`)
    /// applies to the realtime profile.
    pub fn thoth_replies(self, final_every_frames: u64) -> ThothReplies {
        match self {
            Profile::Realtime => ThothReplies {
                every_frame: true,
                final_every_bytes: final_every_frames.max(1) * FRAME_BYTES as u64,
            },
            Profile::Chronus => ThothReplies {
                every_frame: false,
                final_every_bytes: CHRONUS_FINAL_EVERY_BYTES,
            },
        }
    }
}
