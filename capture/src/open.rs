//! Opening any input: the format is recognized from the input itself, never from its name.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use crate::perfdata::PerfDataReader;
use crate::reader::{
    EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, input_name,
    sniff_binary,
};
use crate::tracedat::TraceDat;
use crate::tracefs::{TracefsInput, TracefsReader};

/// Opens a trace of any supported kind (`-` is stdin) and returns its reader.
///
/// Directories are read as copied tracefs trees (or a folder of `*.bin` page dumps beside a
/// `tracefs/` tree, see [`crate::tracefs`]); files are recognized by their magic bytes
/// (trace.dat, perf.data), a `.bin` page dump beside a `tracefs/` tree is read as pages, and
/// anything else is text (ftrace, `trace-cmd report`, `perf script`), whose layout the text
/// reader recognizes line by line.
pub fn open(path: &Path, opts: ReadOptions) -> Result<Box<dyn EventReader>, ReadError> {
    let input = input_name(path);
    let io_err = |e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e));
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map_err(io_err)?;
        return open_bytes(input, bytes, opts);
    }
    if path.is_dir() {
        return match TracefsInput::locate(path) {
            Some(found) => Ok(Box::new(TracefsReader::open(&found, input, opts)?)),
            None => Err(ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat)),
        };
    }
    let mut prefix = [0u8; 16];
    let prefix_len = {
        let mut file = File::open(path).map_err(io_err)?;
        read_prefix(&mut file, &mut prefix).map_err(io_err)?
    };
    match sniff_binary(&prefix[..prefix_len]) {
        Some(InputFormat::TraceDat) => {
            Ok(Box::new(Arc::new(TraceDat::open(path)?).events(0, opts)?))
        }
        Some(InputFormat::PerfData) => Ok(Box::new(PerfDataReader::open(path, opts)?)),
        Some(_) | None => match TracefsInput::locate(path) {
            Some(found) => Ok(Box::new(TracefsReader::open(&found, input, opts)?)),
            None => Err(ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat)),
        },
    }
}

/// Opens a binary trace (trace.dat or perf.data) held in memory, e.g. read from stdin.
pub fn open_bytes(
    input: Arc<str>,
    bytes: Vec<u8>,
    opts: ReadOptions,
) -> Result<Box<dyn EventReader>, ReadError> {
    match sniff_binary(&bytes) {
        Some(InputFormat::TraceDat) => {
            Ok(Box::new(Arc::new(TraceDat::from_bytes(input, bytes)?).events(0, opts)?))
        }
        Some(InputFormat::PerfData) => {
            Ok(Box::new(PerfDataReader::from_bytes(input, bytes, opts)?))
        }
        Some(_) | None => {
            Err(ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat))
        }
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
