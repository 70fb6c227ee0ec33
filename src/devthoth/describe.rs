//! The dev thoth's "transcription": a deterministic description of the audio,
//! so that a test can compute every expected result from the audio it sent.

/// FNV-1a (32 bit) offset basis.
const FNV_OFFSET_BASIS: u32 = 0x811c_9dc5;
/// FNV-1a (32 bit) prime.
const FNV_PRIME: u32 = 0x0100_0193;
/// Full scale of signed 16-bit PCM: `s16le` samples become `s as f32 / 32768.0`.
pub const S16_FULL_SCALE: f32 = 32768.0;

/// The text the dev thoth sends for one whole second of a mux session's audio
/// (or for one legacy window, or for the partial second flushed by
/// `session.end`).
///
/// Format: `second {index}: rms {rms:.4} checksum {checksum:08x}` where
/// - `index` is the caller's index (mux: `floor(start)` in seconds of the
///   session's audio *including* `offset_ms`; legacy: the window number,
///   counted from 0 on each connection),
/// - `rms` is the root mean square of `samples` (computed in f64, 0 when
///   empty), printed with 4 decimals,
/// - `checksum` is FNV-1a (32 bit) over every sample's `f32` little-endian
///   bytes, in order, as 8 lowercase hex digits. `s16le` audio is converted
///   first as `s as f32 / 32768.0`.
///
/// ```
/// use chronus_gateway::devthoth::describe_audio;
/// assert_eq!(describe_audio(0, &[]), "second 0: rms 0.0000 checksum 811c9dc5");
/// ```
pub fn describe_audio(index: u64, samples: &[f32]) -> String {
    let rms = if samples.is_empty() {
        0.0
    } else {
        let sum_of_squares: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (sum_of_squares / samples.len() as f64).sqrt()
    };
    let checksum = samples
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .fold(FNV_OFFSET_BASIS, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(FNV_PRIME)
        });
    format!("second {index}: rms {rms:.4} checksum {checksum:08x}")
}

/// How a session's binary audio is encoded (mono, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 32-bit float samples.
    F32le,
    /// Signed 16-bit samples, converted to `f32` as `s / 32768.0`.
    S16le,
}

impl Encoding {
    /// Parses the protocol's `encoding` value (`f32le` or `s16le`).
    pub fn parse(name: &str) -> Option<Encoding> {
        match name {
            "f32le" => Some(Encoding::F32le),
            "s16le" => Some(Encoding::S16le),
            _ => None,
        }
    }

    /// Bytes per sample.
    pub fn sample_bytes(self) -> usize {
        match self {
            Encoding::F32le => 4,
            Encoding::S16le => 2,
        }
    }

    /// Decodes `bytes` into `f32` samples, or `None` when they are not a
    /// whole number of samples.
    pub fn decode(self, bytes: &[u8]) -> Option<Vec<f32>> {
        if !bytes.len().is_multiple_of(self.sample_bytes()) {
            return None;
        }
        let samples = match self {
            Encoding::F32le => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Encoding::S16le => bytes
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / S16_FULL_SCALE)
                .collect(),
        };
        Some(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_audio_has_zero_rms_and_the_fnv_offset_basis() {
        assert_eq!(
            describe_audio(7, &[]),
            "second 7: rms 0.0000 checksum 811c9dc5"
        );
    }

    #[test]
    fn constant_level_gives_that_rms() {
        let text = describe_audio(3, &[0.25; 16000]);
        assert!(text.starts_with("second 3: rms 0.2500 checksum "), "{text}");
        let negative = describe_audio(3, &[-0.25; 16000]);
        assert!(negative.starts_with("second 3: rms 0.2500 checksum "));
        // Same level, different bytes: the checksum tells them apart.
        assert_ne!(text, negative);
    }

    #[test]
    fn checksum_is_fnv1a_over_little_endian_f32_bytes() {
        // Reference computed independently, byte by byte.
        let samples = [1.0f32, -0.5];
        let mut hash: u32 = 0x811c9dc5;
        for byte in [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xbf] {
            hash ^= byte;
            hash = hash.wrapping_mul(16_777_619);
        }
        let rms = ((1.0f64 + 0.25) / 2.0).sqrt();
        assert_eq!(
            describe_audio(0, &samples),
            format!("second 0: rms {rms:.4} checksum {hash:08x}")
        );
    }

    #[test]
    fn checksum_depends_on_sample_order() {
        assert_ne!(
            describe_audio(0, &[0.1, 0.2]),
            describe_audio(0, &[0.2, 0.1])
        );
    }

    #[test]
    fn s16le_decodes_as_sample_over_32768() {
        let bytes: Vec<u8> = [i16::MIN, -1, 0, 1, i16::MAX]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let samples = Encoding::S16le.decode(&bytes).expect("whole samples");
        assert_eq!(
            samples,
            vec![-1.0, -1.0 / 32768.0, 0.0, 1.0 / 32768.0, 32767.0 / 32768.0]
        );
    }

    #[test]
    fn partial_samples_are_refused() {
        assert!(Encoding::F32le.decode(&[0; 6]).is_none());
        assert!(Encoding::S16le.decode(&[0; 3]).is_none());
        assert_eq!(Encoding::F32le.decode(&[]), Some(vec![]));
    }

    #[test]
    fn only_the_two_protocol_encodings_parse() {
        assert_eq!(Encoding::parse("f32le"), Some(Encoding::F32le));
        assert_eq!(Encoding::parse("s16le"), Some(Encoding::S16le));
        assert_eq!(Encoding::parse("pcm_f32le"), None);
    }
}
