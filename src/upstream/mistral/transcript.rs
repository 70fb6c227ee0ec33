//! What one chronus session has heard from Mistral, so that no text is lost
//! (PROTOCOL.md 4).
//!
//! Mistral's documented flow is text deltas, then `transcription.done`
//! carrying the whole text; segments may be few or absent. So the text of a
//! Mistral session is known in three places: segments (delivered to the
//! browser as finals at once), deltas since the last segment (shown as
//! partials), and `done.text`. When a Mistral session ends — `done`, or
//! Mistral giving up on an idle session (error 3804) — whatever the browser
//! did not get in a segment becomes one last final ([`Transcript::end_upstream`]).
//!
//! One chronus session may span several Mistral sessions (a pause makes
//! Mistral end its session and the gateway opens a fresh one on the next
//! audio): timestamps of a later Mistral session are shifted by the seconds
//! of audio sent to the earlier ones, and the session's whole text
//! ([`Transcript::whole_text`], what `done` carries) joins them.

/// Most bytes of text kept for `done` (and of deltas awaiting a segment).
pub const MAX_TRANSCRIPT_BYTES: usize = 1024 * 1024;

/// A final result for the browser.
#[derive(Debug, Clone, PartialEq)]
pub struct FinalText {
    pub text: String,
    /// Seconds of the chronus session's audio.
    pub start: Option<f64>,
    pub end: Option<f64>,
}

/// The text of one chronus session over Mistral.
#[derive(Debug, Default)]
pub struct Transcript {
    /// Texts of the Mistral sessions already ended, joined with spaces.
    earlier: String,
    /// Segment texts of the current Mistral session, exactly as sent.
    segments_raw: String,
    /// Segment texts of the current Mistral session, trimmed and joined.
    segments_joined: String,
    /// Deltas since the current Mistral session's last segment.
    pending: String,
    /// Seconds of audio sent to the Mistral sessions already ended.
    offset_secs: f64,
    /// Where the current Mistral session's last segment ended (its seconds).
    last_end: Option<f64>,
}

impl Transcript {
    /// A delta: the partial to show (the text since the last segment).
    pub fn on_delta(&mut self, text: &str) -> Option<String> {
        push_bounded(&mut self.pending, text);
        non_empty(self.pending.trim())
    }

    /// A segment: the final to deliver, its times shifted onto the chronus
    /// session's audio.
    pub fn on_segment(
        &mut self,
        text: &str,
        start: Option<f64>,
        end: Option<f64>,
    ) -> Option<FinalText> {
        self.pending.clear();
        push_bounded(&mut self.segments_raw, text);
        if end.is_some() {
            self.last_end = end;
        }
        let text = non_empty(text.trim())?;
        join_bounded(&mut self.segments_joined, &text);
        Some(FinalText {
            text,
            start: start.map(|s| s + self.offset_secs),
            end: end.map(|e| e + self.offset_secs),
        })
    }

    /// The current Mistral session ended (`done`, carrying `done_text` when
    /// Mistral sent one, or an idle timeout) after `audio_secs` of audio:
    /// the text it gave that no segment delivered, as one last final.
    pub fn end_upstream(&mut self, done_text: Option<&str>, audio_secs: f64) -> Option<FinalText> {
        let undelivered = match done_text {
            // `done.text` is the whole text: what the segments did not cover.
            Some(full) => match strip_prefix_ignoring_whitespace(full, &self.segments_raw) {
                Some(rest) => rest.to_owned(),
                // Segments that are not a prefix of the whole text: the
                // deltas are all we can tell apart.
                None => std::mem::take(&mut self.pending),
            },
            None => std::mem::take(&mut self.pending),
        };
        let start = Some(self.last_end.unwrap_or(0.0) + self.offset_secs);
        let tail = non_empty(undelivered.trim());
        if let Some(tail) = &tail {
            join_bounded(&mut self.segments_joined, tail);
        }
        // Mistral's own whole text when it sent one, else what was delivered.
        let session_text = match done_text.map(str::trim) {
            Some(full) if !full.is_empty() => full.to_owned(),
            _ => std::mem::take(&mut self.segments_joined),
        };
        join_bounded(&mut self.earlier, &session_text);
        self.segments_raw.clear();
        self.segments_joined.clear();
        self.pending.clear();
        self.last_end = None;
        self.offset_secs += audio_secs;
        tail.map(|text| FinalText {
            text,
            start,
            end: None,
        })
    }

    /// The session's whole text so far (the Mistral sessions already ended).
    pub fn whole_text(&self) -> &str {
        &self.earlier
    }

    /// Seconds of audio before the current Mistral session.
    pub fn offset_secs(&self) -> f64 {
        self.offset_secs
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

fn push_bounded(into: &mut String, text: &str) {
    if into.len() + text.len() <= MAX_TRANSCRIPT_BYTES {
        into.push_str(text);
    }
}

/// Appends `text` after a single space (none at the start).
fn join_bounded(into: &mut String, text: &str) {
    if text.is_empty() || into.len() + text.len() + 1 > MAX_TRANSCRIPT_BYTES {
        return;
    }
    if !into.is_empty() {
        into.push(' ');
    }
    into.push_str(text);
}

/// `full` without a prefix equal to `prefix` once whitespace is ignored on
/// both sides; `None` when `prefix` is not one.
fn strip_prefix_ignoring_whitespace<'a>(full: &'a str, prefix: &str) -> Option<&'a str> {
    let mut wanted = prefix.chars().filter(|c| !c.is_whitespace()).peekable();
    let mut rest = full;
    while let Some(expected) = wanted.next() {
        let trimmed = rest.trim_start();
        let mut chars = trimmed.chars();
        if chars.next()? != expected {
            return None;
        }
        rest = chars.as_str();
        if wanted.peek().is_none() {
            break;
        }
    }
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_and_done_only_deliver_the_whole_text_as_one_final() {
        let mut t = Transcript::default();
        assert_eq!(t.on_delta(" Hello"), Some("Hello".into()));
        assert_eq!(t.on_delta(" world."), Some("Hello world.".into()));
        let last = t.end_upstream(Some(" Hello world."), 2.0).unwrap();
        assert_eq!(last.text, "Hello world.");
        assert_eq!(last.start, Some(0.0));
        assert_eq!(t.whole_text(), "Hello world.");
    }

    #[test]
    fn trailing_text_after_the_last_segment_comes_from_done_text() {
        let mut t = Transcript::default();
        t.on_delta(" One");
        let seg = t.on_segment(" One two.", Some(0.0), Some(1.5)).unwrap();
        assert_eq!(seg.text, "One two.");
        t.on_delta(" Three");
        // done.text knows more than the deltas the gateway saw.
        let last = t.end_upstream(Some("One two. Three four."), 3.0).unwrap();
        assert_eq!(last.text, "Three four.");
        assert_eq!(last.start, Some(1.5));
        assert_eq!(t.whole_text(), "One two. Three four.");
    }

    #[test]
    fn without_done_text_the_pending_deltas_are_the_last_final() {
        let mut t = Transcript::default();
        t.on_segment("a b", Some(0.0), Some(1.0));
        t.on_delta(" c");
        t.on_delta(" d");
        assert_eq!(t.end_upstream(None, 2.0).unwrap().text, "c d");
        assert_eq!(t.whole_text(), "a b c d");
    }

    #[test]
    fn nothing_is_repeated_when_segments_covered_everything() {
        let mut t = Transcript::default();
        t.on_segment("a b", Some(0.0), Some(1.0));
        t.on_segment(" c", Some(1.0), Some(2.0));
        assert_eq!(t.end_upstream(Some("a b c"), 2.0), None);
        assert_eq!(t.whole_text(), "a b c");
    }

    #[test]
    fn a_later_mistral_session_continues_the_timestamps_and_the_text() {
        let mut t = Transcript::default();
        t.on_segment("first", Some(0.0), Some(1.0));
        t.on_delta(" pending");
        // Mistral timed the idle session out after 2.5 s of audio.
        assert_eq!(t.end_upstream(None, 2.5).unwrap().text, "pending");
        assert_eq!(t.offset_secs(), 2.5);
        let seg = t.on_segment("second", Some(0.0), Some(1.0)).unwrap();
        assert_eq!((seg.start, seg.end), (Some(2.5), Some(3.5)));
        t.end_upstream(Some("second"), 1.0);
        assert_eq!(t.whole_text(), "first pending second");
    }

    #[test]
    fn prefix_matching_ignores_whitespace_only() {
        assert_eq!(
            strip_prefix_ignoring_whitespace("a  b c", "a b"),
            Some(" c")
        );
        assert_eq!(strip_prefix_ignoring_whitespace("a b", ""), Some("a b"));
        assert_eq!(strip_prefix_ignoring_whitespace("a x", "a b"), None);
        assert_eq!(strip_prefix_ignoring_whitespace("a", "a b"), None);
    }
}
