//! What can be wrong with a line of trace text.

use std::fmt;

/// The start of an offending line or body, kept for the message (at most 80 characters).
#[derive(Clone, PartialEq, Eq)]
pub struct Snippet(Box<str>);

impl Snippet {
    const MAX_CHARS: usize = 80;

    /// Keeps the first 80 characters of `text`.
    pub fn new(text: &str) -> Self {
        match text.char_indices().nth(Self::MAX_CHARS) {
            Some((cut, _)) => Self(format!("{}…", &text[..cut]).into()),
            None => Self(text.into()),
        }
    }

    /// The kept text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A line of ftrace, `trace-cmd report` or `perf script` text that cannot be read.
///
/// Only lines that look like trace text are errors (lines of prose around an excerpt are
/// skipped and counted, see [`crate::ReadStats::non_trace_lines`]); the messages say that
/// `--permissive` ([`crate::ReadOptions::permissive`]) skips them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The line has the shape of a trace line (CPU and time columns) but no layout reads it.
    #[error(
        "Unrecognized line: expected {expected}; the line reads {found:?} (--permissive skips \
         such lines and counts them)"
    )]
    UnrecognizedLine {
        /// What the reader looks for.
        expected: &'static str,
        /// The line.
        found: Snippet,
    },
    /// ftrace text printed with `options/latency-format` on.
    #[error(
        "ftrace latency-format text (trace option latency-format is on): its timestamps are \
         microseconds relative to the start of the buffer, with no absolute time, and comms are \
         cut to 8 characters. Re-export the trace with `echo 0 > options/latency-format` (or use \
         `trace-cmd report`, with -l if you want the flags)"
    )]
    LatencyFormat,
    /// The event's body is not any known rendering of that tracepoint.
    #[error(
        "Cannot read the {event} text: expected {expected}; the text reads {found:?} \
         (--permissive skips such lines and counts them)"
    )]
    Body {
        /// The tracepoint.
        event: &'static str,
        /// The renderings the reader knows.
        expected: &'static str,
        /// The body.
        found: Snippet,
    },
    /// The body reads, but lacks a field the typed event needs.
    #[error(
        "Cannot read the {event} text: it has no `{field}`; the text reads {found:?} \
         (--permissive skips such lines and counts them)"
    )]
    MissingField {
        /// The tracepoint.
        event: &'static str,
        /// The field.
        field: &'static str,
        /// The body.
        found: Snippet,
    },
    /// A line longer than the reader accepts.
    #[error("Line longer than {max} bytes: this is not trace text")]
    LineTooLong {
        /// The limit.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_cut_on_char_boundaries() {
        let long = "é".repeat(100);
        let s = Snippet::new(&long);
        assert_eq!(s.as_str().chars().count(), 81);
        assert!(s.as_str().ends_with('…'));
        assert_eq!(Snippet::new("short").as_str(), "short");
    }
}
