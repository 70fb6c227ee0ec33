//! Audio formats the browser may send, and the exact conversions between them.

use base64::Engine;
use bytes::{Bytes, BytesMut};

use crate::error::{ErrorCode, GatewayError};

/// Sample encoding of a session's audio (mono, little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// 32-bit float; what the legacy frontend sends.
    F32le,
    /// 16-bit signed integer.
    S16le,
}

impl Encoding {
    pub fn parse(raw: &str) -> Option<Encoding> {
        match raw {
            "f32le" => Some(Encoding::F32le),
            "s16le" => Some(Encoding::S16le),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::F32le => "f32le",
            Encoding::S16le => "s16le",
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::F32le => 4,
            Encoding::S16le => 2,
        }
    }
}

/// The format of one session's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFormat {
    pub encoding: Encoding,
    pub sample_rate: u32,
}

/// Sample rates a session may declare.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;

impl AudioFormat {
    pub fn bytes_per_second(&self) -> f64 {
        f64::from(self.sample_rate) * self.encoding.bytes_per_sample() as f64
    }

    /// Seconds of audio in `bytes` bytes.
    pub fn seconds(&self, bytes: usize) -> f64 {
        bytes as f64 / self.bytes_per_second()
    }

    /// Refuses a chunk that is not a whole number of samples.
    pub fn check_whole_samples(&self, audio: &[u8]) -> Result<(), GatewayError> {
        if audio.len().is_multiple_of(self.encoding.bytes_per_sample()) {
            Ok(())
        } else {
            Err(GatewayError::with_message(
                ErrorCode::InvalidAudioFormat,
                format!(
                    "Audio frame of {} bytes is not a whole number of {} samples",
                    audio.len(),
                    self.encoding.as_str()
                ),
            ))
        }
    }
}

/// Decodes the `data` of a `{"type":"audio"}` text frame: standard, padded
/// base64. Whether the result is a whole number of samples is checked after,
/// exactly as for a binary frame.
pub fn decode_base64_audio(data: &str) -> Result<Bytes, GatewayError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map(Bytes::from)
        .map_err(|_| {
            GatewayError::with_message(
                ErrorCode::InvalidAudioFormat,
                "Audio data is not valid base64",
            )
        })
}

/// Converts 16-bit samples to 32-bit floats as `sample / 32768.0` (exact: every
/// i16 divided by a power of two is representable in f32).
pub fn s16le_to_f32le(audio: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(audio.len() * 2);
    for pair in audio.chunks_exact(2) {
        let sample = i16::from_le_bytes([pair[0], pair[1]]);
        out.extend_from_slice(&(f32::from(sample) / 32768.0).to_le_bytes());
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s16_conversion_is_exact_on_known_samples() {
        let samples: [i16; 5] = [0, 1, -1, i16::MAX, i16::MIN];
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let converted = s16le_to_f32le(&bytes);
        let floats: Vec<f32> = converted
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(
            floats,
            vec![0.0, 1.0 / 32768.0, -1.0 / 32768.0, 32767.0 / 32768.0, -1.0]
        );
    }

    #[test]
    fn whole_samples_are_checked_per_encoding() {
        let f32fmt = AudioFormat {
            encoding: Encoding::F32le,
            sample_rate: 16_000,
        };
        let s16fmt = AudioFormat {
            encoding: Encoding::S16le,
            sample_rate: 16_000,
        };
        assert!(f32fmt.check_whole_samples(&[0; 8]).is_ok());
        assert_eq!(
            f32fmt.check_whole_samples(&[0; 6]).unwrap_err().code,
            ErrorCode::InvalidAudioFormat
        );
        assert!(s16fmt.check_whole_samples(&[0; 6]).is_ok());
        assert!(s16fmt.check_whole_samples(&[0; 7]).is_err());
    }

    #[test]
    fn seconds_of_audio() {
        let fmt = AudioFormat {
            encoding: Encoding::F32le,
            sample_rate: 16_000,
        };
        assert_eq!(fmt.seconds(64_000), 1.0);
    }
}
