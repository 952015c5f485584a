//! Opening any input: the format is recognized from the input itself, never from its name.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::reader::{
    EventReader, InputFormat, Location, ReadError, ReadErrorKind, ReadOptions, input_name,
    sniff_binary,
};
use crate::text::TextReader;

/// Buffer size for text inputs: large enough that lines rarely straddle a refill.
const TEXT_BUFFER: usize = 256 * 1024;

/// Opens a trace of any supported kind (`-` is stdin) and returns its reader.
///
/// Directories are read as copied tracefs trees; files are recognized by their magic bytes
/// (trace.dat, perf.data) and otherwise read as text (ftrace, `trace-cmd report`,
/// `perf script`), whose layout the text reader recognizes line by line.
pub fn open(path: &Path, opts: ReadOptions) -> Result<Box<dyn EventReader>, ReadError> {
    let input = input_name(path);
    let io_err = |e| ReadError::new(&input, Location::Input, ReadErrorKind::Io(e));
    if path.as_os_str() != "-" && path.is_dir() {
        return Err(ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat));
    }
    let mut prefix = [0u8; 16];
    let prefix_len = if path.as_os_str() == "-" {
        0
    } else {
        let mut file = File::open(path).map_err(io_err)?;
        read_prefix(&mut file, &mut prefix).map_err(io_err)?
    };
    match sniff_binary(&prefix[..prefix_len]) {
        Some(InputFormat::TraceDat | InputFormat::PerfData) | Some(_) => {
            Err(ReadError::new(&input, Location::Input, ReadErrorKind::UnknownFormat))
        }
        None if path.as_os_str() == "-" => Ok(Box::new(TextReader::new(
            input,
            BufReader::with_capacity(TEXT_BUFFER, std::io::stdin()),
            opts,
        ))),
        None => {
            let file = File::open(path).map_err(io_err)?;
            Ok(Box::new(TextReader::new(
                input.clone(),
                BufReader::with_capacity(TEXT_BUFFER, file),
                opts,
            )))
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
