//! Opening any input: the format is recognized from the input itself, never from its name.
//! [`detect`] is the one place that decides; [`open`] and `convert` both match on its
//! [`InputKind`], so a new kind of input is a compile error wherever it needs handling.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use crate::read::perfdata::PerfDataReader;
use crate::read::text::{MAX_EXCERPT_BYTES, TextReader, read_as_excerpt};
use crate::read::tracedat::TraceDat;
use crate::read::tracefs_tree::{TracefsInput, TracefsReader};
use crate::read::{EventReader, Location, ReadError, ReadErrorKind, ReadOptions, input_name};

/// Buffer size for text inputs: large enough that lines rarely straddle a refill.
const TEXT_BUFFER: usize = 256 * 1024;

/// A binary format recognized by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Magic {
    /// trace-cmd's trace.dat (`\x17\x08\x44tracing`), v6 or v7.
    TraceDat,
    /// perf.data (`PERFILE2`, either byte order).
    PerfData,
}

impl Magic {
    /// The format the first bytes of an input announce, if any.
    pub fn of(prefix: &[u8]) -> Option<Self> {
        if prefix.starts_with(b"\x17\x08\x44tracing") {
            Some(Self::TraceDat)
        } else if prefix.starts_with(b"PERFILE2") || prefix.starts_with(b"2ELIFREP") {
            Some(Self::PerfData)
        } else {
            None
        }
    }
}

/// What an input on disk is.
#[derive(Clone, Debug)]
pub enum InputKind {
    /// A binary trace, by its magic.
    Binary(Magic),
    /// A copied tracefs tree, a folder of `*.bin` page dumps beside a `tracefs/` tree, or one
    /// such dump.
    Tracefs(TracefsInput),
    /// Anything else: text (ftrace, `trace-cmd report`, `perf script`), whose layout the text
    /// reader recognizes line by line.
    Text,
}

/// Decides what the input at `path` is (not `-`: stdin is a stream, see [`Magic::of`]).
/// A directory that is no tracefs tree is an error.
pub fn detect(path: &Path) -> Result<InputKind, ReadError> {
    let input = input_name(path);
    if path.is_dir() {
        return TracefsInput::locate(path)
            .map(InputKind::Tracefs)
            .ok_or_else(|| ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat));
    }
    let mut prefix = [0u8; 16];
    let prefix_len = File::open(path)
        .and_then(|mut file| read_prefix(&mut file, &mut prefix))
        .map_err(|e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e)))?;
    Ok(match Magic::of(&prefix[..prefix_len]) {
        Some(magic) => InputKind::Binary(magic),
        None => TracefsInput::locate(path).map_or(InputKind::Text, InputKind::Tracefs),
    })
}

/// Opens a trace of any supported kind (`-` is stdin) and returns its reader ([`detect`] says
/// which).
pub fn open(path: &Path, opts: ReadOptions) -> Result<Box<dyn EventReader>, ReadError> {
    let input = input_name(path);
    let io_err = |e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e));
    if path.as_os_str() == "-" {
        // Binary formats need the whole input (offsets); text streams.
        let mut stdin = BufReader::with_capacity(TEXT_BUFFER, std::io::stdin());
        return match Magic::of(stdin.fill_buf().map_err(io_err)?) {
            Some(_) => {
                let mut bytes = Vec::new();
                stdin.read_to_end(&mut bytes).map_err(io_err)?;
                open_bytes(input, bytes, opts)
            }
            None => {
                // Text small enough to be an excerpt is read whole; a larger one streams on
                // from what was read.
                let mut head = Vec::new();
                let limit = MAX_EXCERPT_BYTES as u64 + 1;
                (&mut stdin).take(limit).read_to_end(&mut head).map_err(io_err)?;
                if read_as_excerpt(head.len() as u64, &head) {
                    Ok(Box::new(TextReader::excerpt(input, &head, opts)))
                } else {
                    let rest = std::io::Cursor::new(head).chain(stdin);
                    Ok(Box::new(TextReader::new(
                        input,
                        BufReader::with_capacity(TEXT_BUFFER, rest),
                        opts,
                    )))
                }
            }
        };
    }
    match detect(path)? {
        InputKind::Binary(Magic::TraceDat) => {
            // --permissive salvages a damaged file (cut short, index lost) as well.
            let td = if opts.permissive {
                TraceDat::open_salvaging(path)?
            } else {
                TraceDat::open(path)?
            };
            Ok(Box::new(Arc::new(td).events(0, opts)?))
        }
        InputKind::Binary(Magic::PerfData) => Ok(Box::new(PerfDataReader::open(path, opts)?)),
        InputKind::Tracefs(found) => Ok(Box::new(TracefsReader::open(&found, input, opts)?)),
        InputKind::Text => {
            let file = File::open(path).map_err(io_err)?;
            let len = file.metadata().map_err(io_err)?.len();
            if len <= MAX_EXCERPT_BYTES as u64 {
                // Small text is read whole: it may be an excerpt (see `read::text`).
                let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                file.take(MAX_EXCERPT_BYTES as u64).read_to_end(&mut bytes).map_err(io_err)?;
                if !read_as_excerpt(len, &bytes) {
                    // A file a tool wrote: streamed, as a larger one.
                    let text = std::io::Cursor::new(bytes);
                    return Ok(Box::new(TextReader::new(input, text, opts)));
                }
                return Ok(Box::new(TextReader::excerpt(input, &bytes, opts)));
            }
            Ok(Box::new(TextReader::new(input, BufReader::with_capacity(TEXT_BUFFER, file), opts)))
        }
    }
}

/// Opens a binary trace (trace.dat or perf.data) held in memory, e.g. read from stdin.
pub fn open_bytes(
    input: Arc<str>,
    bytes: Vec<u8>,
    opts: ReadOptions,
) -> Result<Box<dyn EventReader>, ReadError> {
    match Magic::of(&bytes) {
        Some(Magic::TraceDat) => {
            let td = if opts.permissive {
                TraceDat::from_bytes_salvaging(input, bytes)?
            } else {
                TraceDat::from_bytes(input, bytes)?
            };
            Ok(Box::new(Arc::new(td).events(0, opts)?))
        }
        Some(Magic::PerfData) => Ok(Box::new(PerfDataReader::from_bytes(input, bytes, opts)?)),
        None => Err(ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat)),
    }
}

fn read_prefix(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}
