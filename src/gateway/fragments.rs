//! Reassembly of fragmented browser messages, bounded by `MAX_FRAME_BYTES`
//! in all (shared by the chronus session and the native Mistral proxy).

use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::BytesMut;

use crate::error::{ErrorCode, GatewayError};

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
    ) -> Result<Option<ws::Message>, GatewayError> {
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
            return Err(GatewayError::new(ErrorCode::BadMessage));
        };
        if data.len() + chunk.len() > max_bytes {
            self.pending = None;
            return Err(GatewayError::new(ErrorCode::MessageTooLarge));
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
            .map_err(|_| GatewayError::new(ErrorCode::BadMessage))
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
        assert_eq!(err.code, ErrorCode::BadMessage);
        r.push(Item::FirstBinary(Bytes::from(vec![0; 60])), 100)
            .unwrap();
        let err = r
            .push(Item::Last(Bytes::from(vec![0; 60])), 100)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::MessageTooLarge);
    }
}
