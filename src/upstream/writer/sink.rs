//! The two halves of a connected upstream socket: a stream of decoded frames
//! for the socket's actor, and the write half the writer task encodes into.
//!
//! The writer encodes a whole batch into one buffer and writes it with one
//! `write` (as far as the kernel takes it): `Framed`'s own sink flushes
//! whenever 8 KiB are buffered, i.e. once per 16 KiB chronus frame, which
//! made a system call and a lock round per frame.

use std::io::Cursor;

use actix_codec::{Encoder, Framed};
use actix_http::ws::{Codec, Message, ProtocolError};
use awc::BoxedSocket;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Chain, ReadHalf, WriteHalf};

use crate::upstream::connect::WsFramed;

/// Encoded bytes after which a batch is written even if more frames wait:
/// bounds the batch buffer.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Decoded frames from the socket (what was read along with the handshake
/// comes first).
pub type FrameSource = Framed<Chain<Cursor<BytesMut>, ReadHalf<BoxedSocket>>, Codec>;

/// The write half, with its codec (client mode: frames are masked).
pub struct FrameSink {
    io: WriteHalf<BoxedSocket>,
    codec: Codec,
    batch: BytesMut,
}

/// Splits a connected socket into its frame stream and its write half.
pub fn split(framed: WsFramed) -> (FrameSource, FrameSink) {
    let parts = framed.into_parts();
    let (read, write) = tokio::io::split(parts.io);
    // Bytes read past the handshake response belong to the first frames.
    let read = Cursor::new(parts.read_buf).chain(read);
    let source = Framed::new(read, parts.codec.clone());
    let sink = FrameSink {
        io: write,
        codec: parts.codec,
        batch: parts.write_buf,
    };
    (source, sink)
}

impl FrameSink {
    /// Encodes a frame into the current batch.
    pub fn encode(&mut self, message: Message) -> Result<(), ProtocolError> {
        self.codec.encode(message, &mut self.batch)
    }

    /// Whether the batch is big enough to be written now.
    pub fn batch_full(&self) -> bool {
        self.batch.len() >= MAX_BATCH_BYTES
    }

    /// Writes the batch out.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        self.io.write_all_buf(&mut self.batch).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Writes what is left, then shuts the write half down (TCP FIN).
    pub async fn close(&mut self) -> Result<(), ProtocolError> {
        self.flush().await?;
        self.io.shutdown().await?;
        Ok(())
    }
}
