//! Streaming line splitting over any `BufRead`, without a copy per line.
//!
//! A line is returned as a slice of the reader's own buffer when it lies entirely inside it (the
//! common case), and is assembled in a reused spill buffer only when it straddles a refill. So
//! memory is bounded by the buffer size plus the longest line, and lines longer than
//! [`MAX_LINE`] are reported instead of growing the spill buffer without bound.

use std::io::{self, BufRead};

/// The longest line accepted (1 MiB): no real trace line comes close, and the bound keeps memory
/// independent of the input.
pub(crate) const MAX_LINE: usize = 1 << 20;

/// One step of [`LineReader::next_line`].
pub(crate) enum Line<'a> {
    /// A line, without its `\n` (and without a `\r` before it).
    Text(&'a [u8]),
    /// A line longer than [`MAX_LINE`]; its bytes were skipped.
    TooLong,
}

pub(crate) struct LineReader<R> {
    inner: R,
    /// Bytes of the inner buffer belonging to the line returned last, consumed on the next call.
    pending_consume: usize,
    spill: Vec<u8>,
    eof: bool,
}

impl<R: BufRead> LineReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, pending_consume: 0, spill: Vec::new(), eof: false }
    }

    /// Peeks at the start of the input without consuming it (for format detection).
    pub(crate) fn peek(&mut self) -> io::Result<&[u8]> {
        self.inner.consume(std::mem::take(&mut self.pending_consume));
        self.inner.fill_buf()
    }

    /// The next line, or `None` at the end of the input.
    pub(crate) fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.inner.consume(std::mem::take(&mut self.pending_consume));
        if self.eof {
            return Ok(None);
        }
        self.spill.clear();
        let mut too_long = false;
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(buf) => buf,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                self.eof = true;
                if too_long {
                    return Ok(Some(Line::TooLong));
                }
                if self.spill.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Line::Text(trim_cr(&self.spill))));
            }
            match memchr::memchr(b'\n', buf) {
                Some(at) if self.spill.is_empty() && !too_long && at <= MAX_LINE => {
                    self.pending_consume = at + 1;
                    // Re-borrow: `buf` borrows `self.inner` only.
                    let buf = self.inner.fill_buf()?;
                    return Ok(Some(Line::Text(trim_cr(&buf[..at]))));
                }
                Some(at) => {
                    if !too_long && self.spill.len() + at <= MAX_LINE {
                        self.spill.extend_from_slice(&buf[..at]);
                    } else {
                        too_long = true;
                    }
                    self.inner.consume(at + 1);
                    if too_long {
                        return Ok(Some(Line::TooLong));
                    }
                    return Ok(Some(Line::Text(trim_cr(&self.spill))));
                }
                None => {
                    let n = buf.len();
                    if !too_long && self.spill.len() + n <= MAX_LINE {
                        self.spill.extend_from_slice(buf);
                    } else {
                        too_long = true;
                        self.spill.clear();
                    }
                    self.inner.consume(n);
                }
            }
        }
    }
}

/// The line without a `\r` before its `\n`.
pub(crate) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], cap: usize) -> Vec<Vec<u8>> {
        let mut r = LineReader::new(io::BufReader::with_capacity(cap, input));
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            match line {
                Line::Text(t) => out.push(t.to_vec()),
                Line::TooLong => out.push(b"<too long>".to_vec()),
            }
        }
        out
    }

    #[test]
    fn splits_across_refills_and_keeps_a_last_line_without_newline() {
        let input = b"alpha\r\nbeta gamma\n\nlast";
        for cap in [1, 2, 3, 7, 64] {
            assert_eq!(
                lines(input, cap),
                vec![b"alpha".to_vec(), b"beta gamma".to_vec(), b"".to_vec(), b"last".to_vec()],
                "capacity {cap}"
            );
        }
    }

    #[test]
    fn overlong_lines_are_reported_not_buffered() {
        let mut input = vec![b'x'; MAX_LINE + 10];
        input.extend_from_slice(b"\nok\n");
        assert_eq!(lines(&input, 4096), vec![b"<too long>".to_vec(), b"ok".to_vec()]);
    }

    #[test]
    fn the_line_limit_does_not_depend_on_the_buffer_size() {
        // A buffer larger than the limit holds the whole line; it is still too long. A line of
        // exactly MAX_LINE bytes (a `\r` counts) is accepted.
        for len in [MAX_LINE, MAX_LINE + 1] {
            let mut input = vec![b'x'; len - 1];
            input.extend_from_slice(b"\r\nok");
            let want = if len > MAX_LINE { b"<too long>".to_vec() } else { vec![b'x'; len - 1] };
            for cap in [4096, 4 * MAX_LINE] {
                assert_eq!(lines(&input, cap), vec![want.clone(), b"ok".to_vec()], "{len} {cap}");
            }
        }
    }
}
