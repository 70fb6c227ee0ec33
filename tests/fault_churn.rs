//! Fault injection, connection churn: thousands of connect/disconnect cycles,
//! some cut mid-upgrade or mid-frame by a hand-written client, leave nothing
//! behind.

mod common;
#[path = "common/live_session.rs"]
mod live_session;
#[path = "common/scenario.rs"]
mod scenario;

use std::net::SocketAddr;
use std::time::Duration;

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::*;
use futures_util::StreamExt;
use live_session::*;
use scenario::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

// ---- 4. connect/disconnect cycles --------------------------------------------

/// WebSocket opcodes.
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;

/// A client frame (clients must mask), FIN set.
fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            frame.push(0x80 | 126);
            frame.extend((n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend((n as u64).to_be_bytes());
        }
    }
    frame.extend(mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

fn upgrade_request(addr: SocketAddr, path_and_query: &str) -> String {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A WebSocket client written by hand, so a test can stop anywhere: halfway
/// through the upgrade or a frame, with a FIN or a TCP reset.
struct RawWs {
    stream: TcpStream,
    read_buf: Vec<u8>,
}

impl RawWs {
    async fn upgrade(addr: SocketAddr, path_and_query: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_request(addr, path_and_query).as_bytes())
            .await
            .expect("upgrade request");
        let mut raw = RawWs {
            stream,
            read_buf: Vec::new(),
        };
        loop {
            if let Some(end) = raw.read_buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw.read_buf[..end]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                raw.read_buf.drain(..end + 4);
                return raw;
            }
            assert!(raw.fill().await, "closed during the upgrade");
        }
    }

    /// Reads more bytes; `false` at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.read_buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next whole server frame (servers do not mask): opcode and payload.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((header, len)) = self.frame_header() {
                if self.read_buf.len() >= header + len {
                    let opcode = self.read_buf[0] & 0x0f;
                    let payload = self.read_buf[header..header + len].to_vec();
                    self.read_buf.drain(..header + len);
                    return Some((opcode, payload));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Header length and payload length of the buffered frame, once known.
    fn frame_header(&self) -> Option<(usize, usize)> {
        let buf = &self.read_buf;
        if buf.len() < 2 {
            return None;
        }
        match buf[1] & 0x7f {
            126 if buf.len() >= 4 => Some((4, usize::from(u16::from_be_bytes([buf[2], buf[3]])))),
            127 if buf.len() >= 10 => {
                let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
                Some((10, len as usize))
            }
            126 | 127 => None,
            n => Some((2, usize::from(n))),
        }
    }

    /// The next text message as JSON, answering nothing and skipping pings.
    async fn read_json(&mut self) -> Option<Value> {
        loop {
            match self.read_frame().await? {
                (OP_TEXT, payload) => return serde_json::from_slice(&payload).ok(),
                (OP_PING, _) => {}
                (OP_CLOSE, _) => return None,
                _ => {}
            }
        }
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        // The gateway may already be gone; the cycle's checks say what matters.
        let _ = self.stream.write_all(&masked_frame(opcode, payload)).await;
    }

    /// Writes only the first half of a frame.
    async fn send_half(&mut self, opcode: u8, payload: &[u8]) {
        let frame = masked_frame(opcode, payload);
        let _ = self.stream.write_all(&frame[..frame.len() / 2]).await;
    }

    /// Close handshake: our close 1000, then the server's close, then FIN.
    async fn close_cleanly(mut self) {
        self.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
        while let Some((opcode, _)) = self.read_frame().await {
            if opcode == OP_CLOSE {
                break;
            }
        }
        let _ = self.stream.shutdown().await;
    }

    /// Drops the connection with a TCP reset (SO_LINGER 0).
    fn reset(self) {
        tcp_reset(self.stream);
    }
}

fn tcp_reset(stream: TcpStream) {
    stream.set_zero_linger().expect("SO_LINGER 0");
    drop(stream);
}

/// How one connect/disconnect cycle ends.
#[derive(Debug, Clone, Copy)]
enum Cycle {
    /// Half of the HTTP upgrade request, then a reset.
    ResetMidUpgrade,
    /// Upgraded, then a reset before anything else (the subscription may still
    /// be in flight).
    ResetRightAfterUpgrade,
    /// Half an audio frame before `ready`, then a reset.
    ResetMidFrameBeforeReady,
    /// `ready`, one audio frame and half of the next, then a reset.
    ResetMidFrameAfterAudio,
    /// `ready`, two audio frames, then FIN without a close frame.
    DropWithoutClose,
    /// `ready`, then the close handshake.
    CloseCleanly,
    /// `ready`, audio, `end`, `done`, close 1000 from the gateway.
    EndNormally,
    /// The awc client: `ready`, then its close.
    AwcClose,
}

const CYCLES: [Cycle; 8] = [
    Cycle::ResetMidUpgrade,
    Cycle::ResetRightAfterUpgrade,
    Cycle::ResetMidFrameBeforeReady,
    Cycle::ResetMidFrameAfterAudio,
    Cycle::DropWithoutClose,
    Cycle::CloseCleanly,
    Cycle::EndNormally,
    Cycle::AwcClose,
];

async fn connect_disconnect(gateway: &RunningGateway, cycle: Cycle, n: usize) {
    let addr = gateway.public_addr;
    let path = format!("{TRANSCRIBE}?token={}", token_for(&format!("cycler-{n}")));
    // 100 ms of audio, 1,600 samples.
    let frame = f32_audio(0.25, 0.1);
    match cycle {
        Cycle::ResetMidUpgrade => {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let request = upgrade_request(addr, &path);
            let _ = stream
                .write_all(&request.as_bytes()[..request.len() / 2])
                .await;
            tcp_reset(stream);
        }
        Cycle::ResetRightAfterUpgrade => RawWs::upgrade(addr, &path).await.reset(),
        Cycle::ResetMidFrameBeforeReady => {
            let mut ws = RawWs::upgrade(addr, &path).await;
            ws.send_half(OP_BINARY, &frame).await;
            ws.reset();
        }
        Cycle::ResetMidFrameAfterAudio => {
            let mut ws = RawWs::upgrade(addr, &path).await;
            assert_eq!(ws.read_json().await.expect("ready")["type"], "ready");
            ws.send(OP_BINARY, &frame).await;
            ws.send_half(OP_BINARY, &frame).await;
            ws.reset();
        }
        Cycle::DropWithoutClose => {
            let mut ws = RawWs::upgrade(addr, &path).await;
            assert_eq!(ws.read_json().await.expect("ready")["type"], "ready");
            ws.send(OP_BINARY, &frame).await;
            ws.send(OP_BINARY, &frame).await;
            drop(ws);
        }
        Cycle::CloseCleanly => {
            let mut ws = RawWs::upgrade(addr, &path).await;
            assert_eq!(ws.read_json().await.expect("ready")["type"], "ready");
            ws.close_cleanly().await;
        }
        Cycle::EndNormally => {
            let mut ws = RawWs::upgrade(addr, &path).await;
            assert_eq!(ws.read_json().await.expect("ready")["type"], "ready");
            ws.send(OP_BINARY, &frame).await;
            ws.send(OP_TEXT, br#"{"type":"end"}"#).await;
            let mut last = None;
            while let Some(message) = ws.read_json().await {
                last = Some(message);
            }
            let done = last.expect("done");
            assert_eq!(done["type"], "done");
            assert_eq!(done["data"], describe_audio(0, &[0.25; 1600]));
        }
        Cycle::AwcClose => {
            let token = token_for(&format!("cycler-{n}"));
            let url = ws_url(gateway, TRANSCRIBE);
            let mut client = connect(&url, Auth::Query(&token), None).await.client;
            assert_eq!(client.json().await["type"], "ready");
            client.close().await;
            let (_, close) = client.until_close(Duration::from_secs(10)).await;
            // The gateway answers a client's close with a close frame of its
            // own, without a status code (a browser reports that as 1005).
            assert!(matches!(close, None | Some(1000)), "{close:?}");
        }
    }
}

#[actix_rt::test]
async fn five_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let _one_at_a_time = one_at_a_time();
    const TOTAL: usize = 5_000;
    const AT_A_TIME: usize = 50;
    /// Bound on the test process's memory growth over all cycles.
    const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let rss_before = rss_kib();
    let started = Instant::now();

    let gateway_ref = &gateway;
    futures_util::stream::iter(0..TOTAL)
        .map(|n| async move {
            let cycle = CYCLES[n % CYCLES.len()];
            let run = connect_disconnect(gateway_ref, cycle, n);
            timeout(Duration::from_secs(20), run)
                .await
                .unwrap_or_else(|_| panic!("cycle {n} ({cycle:?}) took over 20 s"));
        })
        .buffer_unordered(AT_A_TIME)
        .collect::<Vec<()>>()
        .await;
    let cycles_took = started.elapsed();

    let settle = Instant::now();
    assert_nothing_left(&gateway, Duration::from_secs(10)).await;
    let settled_in = settle.elapsed();
    let stats = thoth.stats();
    let thoth_clean = eventually(Duration::from_secs(5), || async {
        stats.sessions_ended() == stats.mux_sessions_started()
    })
    .await;
    assert!(
        thoth_clean,
        "thoth still holds sessions: {} started, {} ended",
        stats.mux_sessions_started(),
        stats.sessions_ended()
    );
    let rss_after = rss_kib();
    report_figure(&format!(
        "FIGURES cycles: {TOTAL} connect/disconnect cycles ({AT_A_TIME} at a time) in {} ms \
         ({:.0}/s); refCount and sessionsOpen 0 {} ms later; thoth sessions started {} = ended {} \
         (cancelled {}, done {}); RSS {:.1} MiB before -> {:.1} MiB after ({:+.1} MiB)",
        ms(cycles_took),
        TOTAL as f64 / cycles_took.as_secs_f64(),
        ms(settled_in),
        stats.mux_sessions_started(),
        stats.sessions_ended(),
        stats.sessions_cancelled(),
        stats.sessions_done(),
        mib(rss_before),
        mib(rss_after),
        mib(rss_after) - mib(rss_before),
    ));
    assert!(
        rss_after.saturating_sub(rss_before) < MAX_RSS_GROWTH_KIB,
        "RSS grew by {:.1} MiB",
        mib(rss_after - rss_before)
    );
    gateway.stop().await;
    thoth.stop();
}
