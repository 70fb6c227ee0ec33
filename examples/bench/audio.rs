//! The audio every benchmark session sends, and the running checksum both the
//! fake thoth and the load generator compute over it.
//!
//! Each session's audio is distinct: a sample is a hash of (session, frame,
//! sample index), so a frame relayed to the wrong session — cross-talk — or a
//! lost, repeated or reordered frame changes the checksum the ack carries.

use std::time::Duration;

/// 16 kHz mono f32le: what the legacy frontend sends.
pub const SAMPLE_RATE: usize = 16_000;
/// One 20 ms frame: 320 samples of 4 bytes.
pub const FRAME_BYTES: usize = SAMPLE_RATE / 50 * 4;
/// A real-time browser sends a frame this often.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);

/// FNV-1a-style offset and prime, applied per 32-bit sample (not per byte:
/// four times cheaper, and every relayed frame is whole samples).
const CHECKSUM_SEED: u64 = 0xcbf2_9ce4_8422_2325;
const CHECKSUM_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Order-sensitive checksum over a session's audio bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningChecksum(pub u64);

impl Default for RunningChecksum {
    fn default() -> Self {
        RunningChecksum(CHECKSUM_SEED)
    }
}

impl RunningChecksum {
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let words = bytes.chunks_exact(4);
        let tail = words.remainder();
        for word in words {
            let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            h = (h ^ u64::from(w)).wrapping_mul(CHECKSUM_PRIME);
        }
        for &b in tail {
            h = (h ^ u64::from(b)).wrapping_mul(CHECKSUM_PRIME);
        }
        self.0 = h;
    }
}

/// splitmix64's finalizer: a cheap, well-mixed hash of one word.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The first two samples carry the session and frame numbers as multiples
/// of 2^-24 (exact in f32), so the fake thoth can check every frame on its
/// own; the rest is a hash of (session, frame, sample index).
const HEADER_SCALE: f32 = 16_777_216.0;

/// Frame `frame` of session `session`: 320 f32le samples in [-1, 1).
pub fn fill_frame(session: u32, frame: u64, out: &mut [u8]) {
    let base = (u64::from(session) << 40) ^ (frame << 12);
    for (i, sample) in out.chunks_exact_mut(4).enumerate() {
        let value = match i {
            0 => (session & 0xff_ffff) as f32 / HEADER_SCALE,
            1 => (frame & 0xff_ffff) as f32 / HEADER_SCALE,
            _ => {
                let x = mix(base ^ i as u64);
                f32::from((x >> 48) as u16 as i16) / 32768.0
            }
        };
        sample.copy_from_slice(&value.to_le_bytes());
    }
}

/// The (session, frame) numbers a frame claims to be (low 24 bits each).
pub fn frame_header(audio: &[u8]) -> Option<(u32, u64)> {
    let sample = |i: usize| -> Option<f32> {
        Some(f32::from_le_bytes(
            audio.get(i * 4..i * 4 + 4)?.try_into().ok()?,
        ))
    };
    let session = sample(0)? * HEADER_SCALE;
    let frame = sample(1)? * HEADER_SCALE;
    Some((session as u32, frame as u64))
}

/// Whether `audio` is exactly the frame its header names; `Err` says where
/// it differs (first differing byte, bytes differing).
pub fn check_frame(audio: &[u8], scratch: &mut Vec<u8>) -> Result<(u32, u64), String> {
    let (session, frame) = frame_header(audio).ok_or("frame too short")?;
    scratch.clear();
    scratch.resize(audio.len(), 0);
    fill_frame(session, frame, scratch);
    if scratch == audio {
        return Ok((session, frame));
    }
    let first = audio.iter().zip(scratch.iter()).position(|(a, b)| a != b);
    let differing = audio
        .iter()
        .zip(scratch.iter())
        .filter(|(a, b)| a != b)
        .count();
    Err(format!(
        "frame claiming session {session} frame {frame} ({} bytes) differs from byte {first:?} on, {differing} bytes differ",
        audio.len()
    ))
}

/// What one ack says: the session's bytes and checksum so far, and the
/// (session, frame) numbers of the frame it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub bytes: u64,
    pub checksum: u64,
    pub session: u32,
    pub frame: u64,
}

/// The text of the fake thoth's interim result for a session that has sent
/// `bytes` bytes with `checksum`, the last frame naming (session, frame):
/// `ack <bytes> <checksum as 16 hex digits> <session>/<frame>`.
pub fn ack_text(bytes: u64, checksum: RunningChecksum, last: (u32, u64)) -> String {
    format!("ack {bytes} {:016x} {}/{}", checksum.0, last.0, last.1)
}

/// Parses what follows `ack ` in an ack text, up to the closing quote.
pub fn parse_ack(rest: &str) -> Option<Ack> {
    let end = rest.find('"').unwrap_or(rest.len());
    let mut parts = rest[..end].split(' ');
    let bytes = parts.next()?.parse().ok()?;
    let checksum = u64::from_str_radix(parts.next()?, 16).ok()?;
    let (session, frame) = parts.next()?.split_once('/')?;
    Some(Ack {
        bytes,
        checksum,
        session: session.parse().ok()?,
        frame: frame.parse().ok()?,
    })
}

/// Finds `"<key>":"ack ` in a JSON text and parses the ack after it. Faster
/// than a JSON parser on the hot path; the texts are ours, so it is exact.
pub fn find_ack(json: &str, key: &str) -> Option<Ack> {
    let needle_start = json.find(key)?;
    let after = &json[needle_start + key.len()..];
    let rest = after.strip_prefix("ack ")?;
    parse_ack(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_differ_between_sessions_and_frames() {
        let mut a = vec![0; FRAME_BYTES];
        let mut b = vec![0; FRAME_BYTES];
        fill_frame(1, 7, &mut a);
        fill_frame(2, 7, &mut b);
        assert_ne!(a, b);
        fill_frame(1, 8, &mut b);
        assert_ne!(a, b);
    }

    #[test]
    fn frames_name_themselves_and_check() {
        let mut a = vec![0; FRAME_BYTES];
        fill_frame(4321, 98_765, &mut a);
        assert_eq!(frame_header(&a), Some((4321, 98_765)));
        let mut scratch = Vec::new();
        assert_eq!(check_frame(&a, &mut scratch), Ok((4321, 98_765)));
        a[700] ^= 1;
        assert!(check_frame(&a, &mut scratch).is_err());
    }

    #[test]
    fn ack_round_trips() {
        let mut sum = RunningChecksum::default();
        sum.update(&[1, 2, 3, 4, 5]);
        let json = format!(r#"{{"data":"{}","x":1}}"#, ack_text(5, sum, (7, 9)));
        assert_eq!(
            find_ack(&json, r#""data":""#),
            Some(Ack {
                bytes: 5,
                checksum: sum.0,
                session: 7,
                frame: 9
            })
        );
    }
}
