//! What a writer sends: a WebSocket message, or a thoth mux audio frame
//! (session id, then audio) that the writer assembles itself in one buffer
//! it reuses. Senders then keep exact-size copies of their audio (what the
//! replay holds: no 16-byte prefix pushing each chunk into the allocator's
//! next size class) and no frame is allocated per send.

use awc::ws::Message as WsMessage;
use bytes::{BufMut, Bytes, BytesMut};
use uuid::Uuid;

use crate::wire::thoth_mux::PREFIX_LEN;

pub enum Frame {
    Message(WsMessage),
    MuxAudio { session_id: Uuid, audio: Bytes },
}

/// Payload bytes of a message, as counted against the queue's bounds.
pub fn message_len(message: &WsMessage) -> usize {
    match message {
        WsMessage::Text(text) => text.len(),
        WsMessage::Binary(bytes) => bytes.len(),
        _ => 0,
    }
}

impl Frame {
    /// Payload bytes, as counted against the queue's bounds.
    pub fn len(&self) -> usize {
        match self {
            Frame::Message(message) => message_len(message),
            Frame::MuxAudio { audio, .. } => PREFIX_LEN + audio.len(),
        }
    }

    pub fn is_close(&self) -> bool {
        matches!(self, Frame::Message(WsMessage::Close(_)))
    }

    /// The message to encode. A mux frame is built in `scratch`: the codec
    /// copies it into the socket's buffer and drops it, so the next frame
    /// reuses the same memory.
    pub fn into_message(self, scratch: &mut BytesMut) -> WsMessage {
        match self {
            Frame::Message(message) => message,
            Frame::MuxAudio { session_id, audio } => {
                scratch.reserve(PREFIX_LEN + audio.len());
                scratch.put_slice(session_id.as_bytes());
                scratch.put_slice(&audio);
                WsMessage::Binary(scratch.split().freeze())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mux_frame_is_the_session_id_then_the_audio_in_reused_memory() {
        let id = Uuid::from_bytes([7; 16]);
        let mut scratch = BytesMut::new();
        let frame = Frame::MuxAudio {
            session_id: id,
            audio: Bytes::from_static(&[1, 2, 3, 4]),
        };
        assert_eq!(frame.len(), 20);
        let WsMessage::Binary(first) = frame.into_message(&mut scratch) else {
            panic!("binary");
        };
        assert_eq!(&first[..16], &[7; 16]);
        assert_eq!(&first[16..], &[1, 2, 3, 4]);
        let first_at = first.as_ptr();
        drop(first); // the codec has copied it
        let again = Frame::MuxAudio {
            session_id: id,
            audio: Bytes::from_static(&[5, 6, 7, 8]),
        };
        let WsMessage::Binary(second) = again.into_message(&mut scratch) else {
            panic!("binary");
        };
        assert_eq!(second.as_ptr(), first_at, "the buffer is reused");
        assert_eq!(&second[16..], &[5, 6, 7, 8]);
    }

    #[test]
    fn messages_pass_through_and_count_their_payload() {
        let mut scratch = BytesMut::new();
        let text = Frame::Message(WsMessage::Text("abc".into()));
        assert_eq!(text.len(), 3);
        assert!(!text.is_close());
        assert!(matches!(text.into_message(&mut scratch), WsMessage::Text(t) if t == "abc"));
        assert!(Frame::Message(WsMessage::Close(None)).is_close());
    }
}
