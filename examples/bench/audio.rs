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

/// Frame `frame` of session `session`: 320 f32le samples in [-1, 1).
pub fn fill_frame(session: u32, frame: u64, out: &mut [u8]) {
    let base = (u64::from(session) << 40) ^ (frame << 12);
    for (i, sample) in out.chunks_exact_mut(4).enumerate() {
        let x = mix(base ^ i as u64);
        let value = f32::from((x >> 48) as u16 as i16) / 32768.0;
        sample.copy_from_slice(&value.to_le_bytes());
    }
}

/// The text of the fake thoth's interim result for a session that has sent
/// `bytes` bytes with `checksum`: `ack <bytes> <checksum as 16 hex digits>`.
pub fn ack_text(bytes: u64, checksum: RunningChecksum) -> String {
    format!("ack {bytes} {:016x}", checksum.0)
}

/// Parses what follows `ack ` in an ack text, up to the closing quote.
pub fn parse_ack(rest: &str) -> Option<(u64, u64)> {
    let end = rest.find('"').unwrap_or(rest.len());
    let (bytes, sum) = rest[..end].split_once(' ')?;
    Some((bytes.parse().ok()?, u64::from_str_radix(sum, 16).ok()?))
}

/// Finds `"<key>":"ack ` in a JSON text and parses the ack after it. Faster
/// than a JSON parser on the hot path; the texts are ours, so it is exact.
pub fn find_ack(json: &str, key: &str) -> Option<(u64, u64)> {
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
    fn ack_round_trips() {
        let mut sum = RunningChecksum::default();
        sum.update(&[1, 2, 3, 4, 5]);
        let json = format!(r#"{{"data":"{}","x":1}}"#, ack_text(5, sum));
        assert_eq!(find_ack(&json, r#""data":""#), Some((5, sum.0)));
    }
}
