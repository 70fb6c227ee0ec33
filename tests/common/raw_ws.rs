//! A raw HTTP / WebSocket client over TCP, for input the usual clients refuse
//! to send (an HTTP/1.0 upgrade, a draft WebSocket version, a text frame that
//! is not UTF-8). Frames it writes are masked like a browser's; reads are
//! bounded.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest HTTP head or WebSocket frame a test reads.
const MAX_READ_BYTES: usize = 64 * 1024;
pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

/// A raw TCP connection with what was read past the HTTP head.
pub struct Raw {
    pub stream: TcpStream,
    pub buffered: Vec<u8>,
}

/// The status line and headers of a response, lower-cased names.
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An upgrade request for `path`, as bytes; `http_version` and
/// `ws_version` chosen by the test.
pub fn upgrade_request(addr: &str, path: &str, http_version: &str, ws_version: &str) -> String {
    format!(
        "GET {path} {http_version}\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: {ws_version}\r\n\r\n"
    )
}

pub async fn send_request(addr: &str, request: &str) -> (Head, Raw) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Raw {
        stream,
        buffered: Vec::new(),
    };
    let head_end = loop {
        if let Some(end) = raw.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        assert!(raw.buffered.len() < MAX_READ_BYTES, "HTTP head too long");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), raw.stream.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "connection closed before a response head");
        raw.buffered.extend_from_slice(&chunk[..n]);
    };
    let head_text = String::from_utf8(raw.buffered[..head_end].to_vec()).unwrap();
    raw.buffered.drain(..head_end + 4);
    let mut lines = head_text.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (Head { status, headers }, raw)
}

/// A WebSocket frame read from the server.
#[derive(Debug)]
pub enum ServerFrame {
    Text(Value),
    Close(Option<u16>),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl Raw {
    async fn fill(&mut self, want: usize) -> bool {
        while self.buffered.len() < want {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(15), self.stream.read(&mut chunk))
                .await
                .expect("server answered in time")
            {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// Writes one masked client frame.
    pub async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next text or close frame (pings answered, others skipped).
    pub async fn next_frame(&mut self) -> ServerFrame {
        loop {
            if !self.fill(2).await {
                return ServerFrame::Dropped;
            }
            let opcode = self.buffered[0] & 0x0F;
            let (len, header) = match self.buffered[1] & 0x7F {
                126 => {
                    if !self.fill(4).await {
                        return ServerFrame::Dropped;
                    }
                    (
                        u16::from_be_bytes([self.buffered[2], self.buffered[3]]) as usize,
                        4,
                    )
                }
                127 => {
                    if !self.fill(10).await {
                        return ServerFrame::Dropped;
                    }
                    let bytes: [u8; 8] = self.buffered[2..10].try_into().unwrap();
                    (u64::from_be_bytes(bytes) as usize, 10)
                }
                len => (len as usize, 2),
            };
            assert!(len < MAX_READ_BYTES, "frame of {len} bytes");
            if !self.fill(header + len).await {
                return ServerFrame::Dropped;
            }
            let payload: Vec<u8> = self.buffered.drain(..header + len).skip(header).collect();
            match opcode {
                OPCODE_TEXT => {
                    return ServerFrame::Text(serde_json::from_slice(&payload).expect("JSON"))
                }
                OPCODE_CLOSE => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return ServerFrame::Close(code);
                }
                OPCODE_PING => self.send_frame(true, OPCODE_PONG, &payload).await,
                _ => {}
            }
        }
    }

    /// The text frames until the close (or the drop) that ends the socket.
    pub async fn until_close(&mut self) -> (Vec<Value>, ServerFrame) {
        let mut texts = Vec::new();
        loop {
            match self.next_frame().await {
                ServerFrame::Text(v) => texts.push(v),
                end => return (texts, end),
            }
        }
    }
}

/// A version-13 upgrade on `path`, answered 101.
pub async fn open_raw_websocket(addr: &str, path: &str) -> Raw {
    let (head, raw) = send_request(addr, &upgrade_request(addr, path, "HTTP/1.1", "13")).await;
    assert_eq!(head.status, 101, "the upgrade is accepted");
    raw
}
