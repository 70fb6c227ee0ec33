//! The browser's request body, handed to actix-web-actors one WebSocket
//! frame per turn. Its `WsStream` reads everything the body has before it
//! decodes one frame, so a session that falls behind pulled its whole
//! backlog out of the kernel into an ever-growing buffer: at 5,000 chronus
//! sessions that took the gateway from 27 to 79 µs per frame, 58% of it the
//! kernel zeroing fresh pages for those buffers, and never recovered. Handed
//! one frame per turn, the backlog stays in the socket, where TCP slows the
//! browser down, and `WsStream`'s buffer holds one frame.
//!
//! Nothing is copied: the pieces handed on are slices of the body's chunks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Where the body stands against the next frame's header.
#[derive(Debug, PartialEq)]
enum FrameLen {
    /// Not enough bytes to know the frame's length yet.
    Incomplete,
    /// Header and payload together.
    Total(usize),
    /// Longer than any frame the codec takes: handed on unpaced, for the
    /// codec to refuse.
    TooBig,
}

/// RFC 6455 5.2: the length of the frame starting at `head`.
fn frame_len(head: &[u8], max_payload: usize) -> FrameLen {
    let [_, second, ..] = head else {
        return FrameLen::Incomplete;
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, payload) = match second & 0x7F {
        126 => match head.get(2..4) {
            Some(ext) => (2, u64::from(u16::from_be_bytes([ext[0], ext[1]]))),
            None => return FrameLen::Incomplete,
        },
        127 => match head.get(2..10) {
            Some(ext) => (8, u64::from_be_bytes(ext.try_into().expect("8 bytes"))),
            None => return FrameLen::Incomplete,
        },
        short => (0, u64::from(short)),
    };
    if payload > max_payload as u64 {
        return FrameLen::TooBig;
    }
    FrameLen::Total(2 + extended + mask + payload as usize)
}

/// The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;

/// A body stream handing on at most one frame per turn of its reader.
pub struct PacedFrames<S> {
    body: S,
    max_payload: usize,
    /// What the body gave and was not handed on yet.
    stash: Bytes,
    /// Bytes of the current frame not handed on yet (0: at a frame's start).
    frame_left: usize,
    /// The current frame's first bytes, while its header is incomplete.
    head: Vec<u8>,
    /// A frame was completed this turn: the next poll ends the turn.
    turn_done: bool,
    /// A frame too long for the codec was seen: everything passes unpaced.
    unpaced: bool,
    /// The body's end (or error), held until the stash is handed on.
    finished: Option<Option<Result<Bytes, actix_web::error::PayloadError>>>,
}

impl<S> PacedFrames<S> {
    pub fn new(body: S, max_payload: usize) -> PacedFrames<S> {
        PacedFrames {
            body,
            max_payload,
            stash: Bytes::new(),
            frame_left: 0,
            head: Vec::with_capacity(MAX_HEADER),
            turn_done: false,
            unpaced: false,
            finished: None,
        }
    }

    /// The next piece out of the stash: up to the current frame's end.
    fn next_piece(&mut self) -> Option<Bytes> {
        if self.unpaced {
            return Some(std::mem::take(&mut self.stash));
        }
        if self.frame_left == 0 {
            let seen = self.head.len();
            let peek = (MAX_HEADER - seen).min(self.stash.len());
            self.head.extend_from_slice(&self.stash[..peek]);
            let known = frame_len(&self.head, self.max_payload);
            self.head.truncate(seen);
            match known {
                FrameLen::Incomplete => {
                    // Too short to tell: hand it on, remember it.
                    self.head.extend_from_slice(&self.stash);
                    return Some(std::mem::take(&mut self.stash));
                }
                FrameLen::TooBig => {
                    self.unpaced = true;
                    return Some(std::mem::take(&mut self.stash));
                }
                FrameLen::Total(total) => {
                    self.frame_left = total - seen;
                    self.head.clear();
                }
            }
        }
        let piece = self.stash.split_to(self.frame_left.min(self.stash.len()));
        self.frame_left -= piece.len();
        self.turn_done = self.frame_left == 0;
        Some(piece)
    }
}

impl<S> Stream for PacedFrames<S>
where
    S: Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
{
    type Item = Result<Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.turn_done {
            // End the reader's turn: it decodes the frame it has. Come back
            // at once if more is here; else the body wakes us when it is.
            this.turn_done = false;
            if this.stash.is_empty() && this.finished.is_none() {
                match Pin::new(&mut this.body).poll_next(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(chunk))) => this.stash = chunk,
                    Poll::Ready(other) => this.finished = Some(other),
                }
            }
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        loop {
            if !this.stash.is_empty() {
                return Poll::Ready(this.next_piece().map(Ok));
            }
            if let Some(finished) = this.finished.take() {
                return Poll::Ready(finished);
            }
            match Pin::new(&mut this.body).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.stash = chunk,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use futures_util::task::noop_waker;

    /// A masked binary frame with `payload_len` bytes of `fill`.
    fn frame(payload_len: usize, fill: u8) -> Vec<u8> {
        let mut out = vec![0x82];
        match payload_len {
            0..=125 => out.push(0x80 | payload_len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload_len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload_len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out.extend(std::iter::repeat_n(fill, payload_len));
        out
    }

    type Body = stream::Iter<std::vec::IntoIter<Result<Bytes, actix_web::error::PayloadError>>>;

    fn paced(chunks: Vec<Vec<u8>>) -> PacedFrames<Body> {
        let chunks: Vec<_> = chunks.into_iter().map(|c| Ok(Bytes::from(c))).collect();
        PacedFrames::new(stream::iter(chunks), 1 << 20)
    }

    /// The bytes handed on in each turn (a turn ends with `Pending`), until the end.
    fn turns(mut paced: PacedFrames<Body>) -> Vec<Vec<u8>> {
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut turns = vec![Vec::new()];
        loop {
            match Pin::new(&mut paced).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(piece))) => turns.last_mut().unwrap().extend_from_slice(&piece),
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Ready(None) => break,
                Poll::Pending => turns.push(Vec::new()),
            }
        }
        turns.retain(|t| !t.is_empty());
        turns
    }

    #[test]
    fn frame_lengths_follow_rfc_6455() {
        assert_eq!(frame_len(&[0x82], 100), FrameLen::Incomplete);
        assert_eq!(frame_len(&frame(5, 0), 100), FrameLen::Total(2 + 4 + 5));
        assert_eq!(frame_len(&frame(300, 0)[..3], 1000), FrameLen::Incomplete);
        assert_eq!(
            frame_len(&frame(300, 0), 1000),
            FrameLen::Total(4 + 4 + 300)
        );
        assert_eq!(
            frame_len(&frame(70_000, 0)[..9], 1 << 20),
            FrameLen::Incomplete
        );
        assert_eq!(
            frame_len(&frame(70_000, 0), 1 << 20),
            FrameLen::Total(10 + 4 + 70_000)
        );
        assert_eq!(frame_len(&frame(300, 0), 299), FrameLen::TooBig);
        // Unmasked (a server's frame): no mask key.
        assert_eq!(frame_len(&[0x82, 5], 100), FrameLen::Total(7));
    }

    #[test]
    fn a_chunk_of_three_frames_is_handed_on_one_frame_per_turn() {
        let (a, b, c) = (frame(16_384, 1), frame(10, 2), frame(300, 3));
        let chunk = [a.clone(), b.clone(), c.clone()].concat();
        assert_eq!(turns(paced(vec![chunk])), vec![a, b, c]);
    }

    #[test]
    fn a_frame_split_over_chunks_and_headers_cut_anywhere_arrive_whole() {
        let (a, b) = (frame(16_384, 1), frame(300, 2));
        let all = [a.clone(), b.clone()].concat();
        // Cut after 1 byte (mid-header), mid-payload, and 3 bytes into b's header.
        let cuts = [1, 8_000, a.len() + 3];
        let mut chunks = Vec::new();
        let mut from = 0;
        for to in cuts {
            chunks.push(all[from..to].to_vec());
            from = to;
        }
        chunks.push(all[from..].to_vec());
        assert_eq!(turns(paced(chunks)), vec![a, b]);
    }

    #[test]
    fn a_frame_too_long_for_the_codec_passes_unpaced() {
        let big = frame(2_000, 7);
        let mut paced = paced(vec![[big.clone(), frame(5, 1)].concat()]);
        paced.max_payload = 1_000;
        assert_eq!(turns(paced), vec![[big, frame(5, 1)].concat()]);
    }

    #[test]
    fn the_end_of_the_body_comes_after_the_last_frame() {
        let a = frame(20, 1);
        let got = turns(paced(vec![a.clone()]));
        assert_eq!(got, vec![a]);
    }
}
