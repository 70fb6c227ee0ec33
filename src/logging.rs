//! The gateway's log format, with every message escaped in one place.
//!
//! Log messages carry values chosen by others: token claims (`sub`), query
//! parameters, Origin, paths, upstream error texts. A CR or LF in one of them
//! would start a line that looks like the gateway's own; a bidi control
//! (U+202E…) would make a line read differently from what it holds. So the
//! whole formatted message is escaped on its way out, whichever call site
//! wrote it: control characters (C0, DEL, C1) and bidi controls become
//! visible escapes such as `\n` or `\u{202e}`. A line of the log is always
//! exactly one record.

use std::fmt;
use std::io::Write;

/// Sets up `env_logger` (`RUST_LOG`, default `info`) with the escaping
/// format: `[TIMESTAMP LEVEL target] message`, as env_logger's default.
pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let timestamp = buf.timestamp();
            write!(
                buf,
                "[{timestamp} {:<5} {}] ",
                record.level(),
                record.target()
            )?;
            let mut escaped = EscapingWriter::new(&mut *buf);
            // An error here is the sink's, kept by the adapter.
            let _ = fmt::write(&mut escaped, *record.args());
            escaped.finish()?;
            writeln!(buf)
        })
        .init();
}

/// `text` with every character that could forge or disguise a log line
/// escaped (see [`needs_escape`]); for the rare caller that builds a log
/// line outside the logger (e.g. printed to stderr).
pub fn escape_for_log(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = fmt::Write::write_str(&mut EscapingWriter::new(StringSink(&mut out)), text);
    out
}

/// Whether `c` must not reach a log line as is: C0 controls (CR, LF, TAB,
/// ESC…), DEL, C1 controls (U+0080–U+009F, incl. NEL) and the Unicode bidi
/// controls (U+061C, U+200E/U+200F, U+202A–U+202E, U+2066–U+2069). U+2028
/// and U+2029 (line and paragraph separators) too: some viewers break lines
/// there.
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Writes the escape of one character.
fn write_escape(out: &mut impl fmt::Write, c: char) -> fmt::Result {
    match c {
        '\n' => out.write_str("\\n"),
        '\r' => out.write_str("\\r"),
        '\t' => out.write_str("\\t"),
        other => write!(out, "\\u{{{:x}}}", other as u32),
    }
}

/// A `fmt::Write` that escapes as it goes into an `io::Write`, so a log
/// record is formatted once and never copied whole.
struct EscapingWriter<W> {
    sink: W,
    error: Option<std::io::Error>,
}

impl<W> EscapingWriter<W> {
    fn new(sink: W) -> Self {
        EscapingWriter { sink, error: None }
    }

    fn finish(self) -> std::io::Result<()> {
        self.error.map_or(Ok(()), Err)
    }
}

/// Adapts a `String` to the writer above.
struct StringSink<'a>(&'a mut String);

impl Write for StringSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // Only whole `str` slices are written here.
        self.0.push_str(&String::from_utf8_lossy(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> fmt::Write for EscapingWriter<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut clean_from = 0;
        for (at, c) in text.char_indices() {
            if !needs_escape(c) {
                continue;
            }
            let mut escape = String::with_capacity(10);
            write_escape(&mut escape, c)?;
            let result = self
                .sink
                .write_all(&text.as_bytes()[clean_from..at])
                .and_then(|()| self.sink.write_all(escape.as_bytes()));
            if let Err(e) = result {
                self.error = Some(e);
                return Err(fmt::Error);
            }
            clean_from = at + c.len_utf8();
        }
        self.sink
            .write_all(&text.as_bytes()[clean_from..])
            .map_err(|e| {
                self.error = Some(e);
                fmt::Error
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_and_controls_become_visible_escapes() {
        assert_eq!(
            escape_for_log("a\r\n[2026-01-01T00:00:00Z INFO  forged] b"),
            "a\\r\\n[2026-01-01T00:00:00Z INFO  forged] b"
        );
        assert_eq!(escape_for_log("tab\there"), "tab\\there");
        assert_eq!(escape_for_log("esc\u{1b}[31m"), "esc\\u{1b}[31m");
        assert_eq!(escape_for_log("nul\0del\u{7f}"), "nul\\u{0}del\\u{7f}");
        assert_eq!(escape_for_log("nel\u{85}csi\u{9b}"), "nel\\u{85}csi\\u{9b}");
        assert_eq!(escape_for_log("ls\u{2028}"), "ls\\u{2028}");
    }

    #[test]
    fn every_bidi_control_is_escaped() {
        let bidi = [
            0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068,
            0x2069,
        ];
        for code in bidi {
            let c = char::from_u32(code).unwrap();
            assert_eq!(
                escape_for_log(&format!("x{c}y")),
                format!("x\\u{{{code:x}}}y")
            );
        }
    }

    #[test]
    fn ordinary_text_is_untouched() {
        let text = "session 1f0e: opened for user ännä 日本 (provider thoth) \\ \"q\"";
        assert_eq!(escape_for_log(text), text);
    }
}
