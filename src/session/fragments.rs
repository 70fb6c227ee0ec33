//! Reassembly of fragmented browser messages, bounded by `MAX_FRAME_BYTES`
//! in all, and what a broken browser frame costs a session (shared by the
//! chronus session and the native Mistral proxy).

use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::BytesMut;

use crate::error::{ErrorCode, GatewayError};

/// RFC 6455 7.4.1: data inconsistent with the message type (a text message
/// that is not UTF-8).
pub const INVALID_PAYLOAD_CLOSE: u16 = 1007;
/// RFC 6455 7.4.1: a message too big to process.
pub const MESSAGE_TOO_BIG_CLOSE: u16 = 1009;

/// A browser frame the session cannot take: the envelope to send, and the
/// close code that follows it (`None`: the session goes on).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameFault {
    pub error: GatewayError,
    pub close_code: Option<u16>,
}

impl FrameFault {
    /// A text message that is not UTF-8: `BAD_MESSAGE`, then close 1007.
    pub fn invalid_utf8() -> Self {
        FrameFault {
            error: GatewayError::with_message(
                ErrorCode::BadMessage,
                "Text frames must be valid UTF-8",
            ),
            close_code: Some(INVALID_PAYLOAD_CLOSE),
        }
    }

    fn too_large() -> Self {
        FrameFault {
            error: GatewayError::new(ErrorCode::MessageTooLarge),
            close_code: Some(MESSAGE_TOO_BIG_CLOSE),
        }
    }

    fn out_of_sequence() -> Self {
        FrameFault {
            error: GatewayError::new(ErrorCode::BadMessage),
            close_code: None,
        }
    }

    /// The fault a frame-decoding error stands for, or `None` when the
    /// browser's stream is simply broken (the session just ends). The
    /// codec reports a non-UTF-8 text frame only as an I/O error carrying
    /// the `Utf8Error` text, hence the match on it.
    pub fn of_protocol_error(error: &ws::ProtocolError) -> Option<Self> {
        match error {
            ws::ProtocolError::Overflow => Some(FrameFault::too_large()),
            ws::ProtocolError::Io(io)
                if io.kind() == std::io::ErrorKind::Other && io.to_string().contains("utf-8") =>
            {
                Some(FrameFault::invalid_utf8())
            }
            _ => None,
        }
    }
}

/// A message being reassembled from continuation frames.
#[derive(Default)]
pub struct Reassembler {
    pending: Option<(bool, BytesMut)>,
}

impl Reassembler {
    /// Adds one continuation item: the whole message once its last fragment
    /// arrives, `None` while more are due, or the error to report (a
    /// fragment out of sequence, invalid UTF-8, or over `max_bytes`).
    pub fn push(
        &mut self,
        item: Item,
        max_bytes: usize,
    ) -> Result<Option<ws::Message>, FrameFault> {
        let (chunk, last) = match item {
            Item::FirstText(data) => {
                self.pending = Some((true, BytesMut::new()));
                (data, false)
            }
            Item::FirstBinary(data) => {
                self.pending = Some((false, BytesMut::new()));
                (data, false)
            }
            Item::Continue(data) => (data, false),
            Item::Last(data) => (data, true),
        };
        let Some((_, data)) = self.pending.as_mut() else {
            return Err(FrameFault::out_of_sequence());
        };
        if data.len() + chunk.len() > max_bytes {
            self.pending = None;
            return Err(FrameFault::too_large());
        }
        data.extend_from_slice(&chunk);
        if !last {
            return Ok(None);
        }
        let Some((text, data)) = self.pending.take() else {
            return Ok(None); // unreachable: checked above
        };
        if !text {
            return Ok(Some(ws::Message::Binary(data.freeze())));
        }
        String::from_utf8(data.to_vec())
            .map(|text| Some(ws::Message::Text(text.into())))
            .map_err(|_| FrameFault::invalid_utf8())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn reassembles_text_and_binary() {
        let mut r = Reassembler::default();
        assert!(r
            .push(Item::FirstText(Bytes::from_static(b"{\"ty")), 100)
            .unwrap()
            .is_none());
        let done = r
            .push(Item::Last(Bytes::from_static(b"pe\":1}")), 100)
            .unwrap();
        assert_eq!(done, Some(ws::Message::Text("{\"type\":1}".into())));
        r.push(Item::FirstBinary(Bytes::from_static(&[1, 2])), 100)
            .unwrap();
        r.push(Item::Continue(Bytes::from_static(&[3])), 100)
            .unwrap();
        let done = r.push(Item::Last(Bytes::from_static(&[4])), 100).unwrap();
        assert_eq!(
            done,
            Some(ws::Message::Binary(Bytes::from_static(&[1, 2, 3, 4])))
        );
    }

    #[test]
    fn refuses_oversize_and_out_of_sequence() {
        let mut r = Reassembler::default();
        let err = r
            .push(Item::Continue(Bytes::from_static(b"x")), 100)
            .unwrap_err();
        assert_eq!(err.error.code, ErrorCode::BadMessage);
        assert_eq!(err.close_code, None);
        r.push(Item::FirstBinary(Bytes::from(vec![0; 60])), 100)
            .unwrap();
        let err = r
            .push(Item::Last(Bytes::from(vec![0; 60])), 100)
            .unwrap_err();
        assert_eq!(err.error.code, ErrorCode::MessageTooLarge);
        assert_eq!(err.close_code, Some(1009));
    }

    #[test]
    fn reassembled_text_that_is_not_utf8_closes_1007() {
        let mut r = Reassembler::default();
        r.push(Item::FirstText(Bytes::from_static(&[b'{', 0xC3])), 100)
            .unwrap();
        let err = r
            .push(Item::Last(Bytes::from_static(&[0x28])), 100)
            .unwrap_err();
        assert_eq!(err, FrameFault::invalid_utf8());
        assert_eq!(err.error.code, ErrorCode::BadMessage);
        assert_eq!(err.close_code, Some(1007));
    }

    #[test]
    fn the_codecs_utf8_error_is_recognised_and_other_io_errors_are_not() {
        // Built the way actix-web-actors builds it from a text frame
        // (`ByteString::try_from` fails with `str::from_utf8`'s error).
        let invalid = Bytes::from(vec![0xFF, 0xFE]);
        let utf8 = std::str::from_utf8(&invalid).unwrap_err();
        let codec_error = ws::ProtocolError::Io(std::io::Error::other(format!("{utf8}")));
        assert_eq!(
            FrameFault::of_protocol_error(&codec_error),
            Some(FrameFault::invalid_utf8())
        );
        let reset = ws::ProtocolError::Io(std::io::Error::other("connection reset"));
        assert_eq!(FrameFault::of_protocol_error(&reset), None);
        assert_eq!(
            FrameFault::of_protocol_error(&ws::ProtocolError::Overflow)
                .unwrap()
                .close_code,
            Some(1009)
        );
    }
}
