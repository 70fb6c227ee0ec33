//! The audio the gateway holds, read off its admin listener (`GET /metrics`,
//! Prometheus text) while a figure runs: a thread scrapes every
//! [`SCRAPE_EVERY`] and keeps the peaks and the last value in the window.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How often the gauges are read (they are read off at scrape time).
pub const SCRAPE_EVERY: Duration = Duration::from_millis(250);
/// Connect, write and read bound of one scrape; a slower scrape is skipped.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

const QUEUED_SERIES: &str = r#"chronus_audio_buffered_bytes{kind="queued"}"#;
const REPLAY_SERIES: &str = r#"chronus_audio_buffered_bytes{kind="replay"}"#;
const BUDGET_SERIES: &str = "chronus_audio_buffer_budget_bytes";
const CPU_UTILIZATION_SERIES: &str = "chronus_cpu_utilization_ratio";

/// The gauges of one scrape (`None`: the series was not in it).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct AdminScrape {
    /// Audio queued toward thoth sockets, bytes.
    pub queued_bytes: Option<f64>,
    /// Audio kept in the sessions' replay buffers (resume), bytes.
    pub replay_bytes: Option<f64>,
    /// The configured `AUDIO_BUFFER_BUDGET_BYTES`.
    pub budget_bytes: Option<f64>,
    /// Smoothed share of the cores the gateway may use, 0 to 1.
    pub cpu_utilization: Option<f64>,
}

impl AdminScrape {
    /// Queued plus replay: the audio the gateway holds.
    fn held_bytes(&self) -> Option<f64> {
        match (self.queued_bytes, self.replay_bytes) {
            (None, None) => None,
            (q, r) => Some(q.unwrap_or(0.0) + r.unwrap_or(0.0)),
        }
    }
}

/// Reads the four gauges out of a Prometheus text exposition, line by line:
/// a sample line is `series value`, the series matched whole (so that
/// `…_bytes` never matches a longer name). Comments and other series are skipped.
pub fn parse_exposition(text: &str) -> AdminScrape {
    let mut scrape = AdminScrape::default();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(series), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let slot = match series {
            QUEUED_SERIES => &mut scrape.queued_bytes,
            REPLAY_SERIES => &mut scrape.replay_bytes,
            BUDGET_SERIES => &mut scrape.budget_bytes,
            CPU_UTILIZATION_SERIES => &mut scrape.cpu_utilization,
            _ => continue,
        };
        if let Ok(value) = value.parse::<f64>() {
            *slot = Some(value);
        }
    }
    scrape
}

/// One `GET /metrics` (HTTP/1.1, `Connection: close`); `None` when it fails
/// or the answer is not a 200.
pub fn scrape(admin: SocketAddr) -> Option<AdminScrape> {
    let mut stream = TcpStream::connect_timeout(&admin, SCRAPE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT)).ok()?;
    // HTTP/1.0: the body comes whole, never chunked (a chunk boundary could
    // cut a line, and its number, in two).
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    if !head.starts_with("HTTP/1.") || status != "200" {
        return None;
    }
    Some(parse_exposition(body))
}

/// What the scrapes of one run found (`None`: no scrape succeeded or had it).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct AudioWatch {
    /// Peak of queued + replay, bytes.
    pub held_peak_bytes: Option<f64>,
    /// Replay bytes of the last scrape answered before the window's end.
    pub replay_end_bytes: Option<f64>,
    pub cpu_utilization_peak: Option<f64>,
    /// The gateway's `AUDIO_BUFFER_BUDGET_BYTES` (its default unless given).
    pub budget_bytes: Option<f64>,
}

fn max_of(peak: Option<f64>, value: Option<f64>) -> Option<f64> {
    match (peak, value) {
        (Some(p), Some(v)) => Some(p.max(v)),
        (p, v) => p.or(v),
    }
}

impl AudioWatch {
    pub fn record(&mut self, scrape: &AdminScrape) {
        self.held_peak_bytes = max_of(self.held_peak_bytes, scrape.held_bytes());
        self.cpu_utilization_peak = max_of(self.cpu_utilization_peak, scrape.cpu_utilization);
        if scrape.replay_bytes.is_some() {
            self.replay_end_bytes = scrape.replay_bytes;
        }
        if scrape.budget_bytes.is_some() {
            self.budget_bytes = scrape.budget_bytes;
        }
    }

    /// Scrapes `admin` every [`SCRAPE_EVERY`] until `until`. Only scrapes
    /// answered before `until` count: one still under way when the window
    /// ends would read the gateway after the sessions ended.
    pub fn run(admin: SocketAddr, until: Instant) -> AudioWatch {
        let mut watch = AudioWatch::default();
        while Instant::now() + SCRAPE_EVERY < until {
            let started = Instant::now();
            if let Some(s) = scrape(admin).filter(|_| Instant::now() < until) {
                watch.record(&s);
            }
            std::thread::sleep(SCRAPE_EVERY.saturating_sub(started.elapsed()));
        }
        watch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP chronus_audio_buffer_budget_bytes The process-wide audio-buffer budget (AUDIO_BUFFER_BUDGET_BYTES)
# TYPE chronus_audio_buffer_budget_bytes gauge
chronus_audio_buffer_budget_bytes 209715200
chronus_audio_buffer_budget_bytes_total 1
# HELP chronus_audio_buffered_bytes Audio held for thoth: queued toward its sockets, or kept for replay
# TYPE chronus_audio_buffered_bytes gauge
chronus_audio_buffered_bytes{kind="queued"} 1048576
chronus_audio_buffered_bytes{kind="replay"} 3145728
chronus_cpu_utilization_ratio 0.875
"#;

    #[test]
    fn the_four_gauges_are_read_by_their_series() {
        let scrape = parse_exposition(EXPOSITION);
        assert_eq!(scrape.budget_bytes, Some(209_715_200.0));
        assert_eq!(scrape.queued_bytes, Some(1_048_576.0));
        assert_eq!(scrape.replay_bytes, Some(3_145_728.0));
        assert_eq!(scrape.cpu_utilization, Some(0.875));
        assert_eq!(scrape.held_bytes(), Some(4_194_304.0));
    }

    #[test]
    fn a_gateway_without_the_gauges_gives_none() {
        let scrape = parse_exposition("# HELP x\nchronus_sessions_active 3\n");
        assert_eq!(scrape, AdminScrape::default());
        assert_eq!(scrape.held_bytes(), None);
    }

    #[test]
    fn the_watch_keeps_peaks_and_the_last_replay() {
        let mut watch = AudioWatch::default();
        watch.record(&AdminScrape {
            queued_bytes: Some(5.0),
            replay_bytes: Some(10.0),
            budget_bytes: Some(100.0),
            cpu_utilization: Some(0.9),
        });
        watch.record(&AdminScrape {
            queued_bytes: Some(1.0),
            replay_bytes: Some(2.0),
            budget_bytes: Some(100.0),
            cpu_utilization: Some(0.5),
        });
        assert_eq!(watch.held_peak_bytes, Some(15.0));
        assert_eq!(watch.replay_end_bytes, Some(2.0));
        assert_eq!(watch.cpu_utilization_peak, Some(0.9));
        assert_eq!(watch.budget_bytes, Some(100.0));
    }
}
