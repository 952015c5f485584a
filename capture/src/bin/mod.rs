//! Checked, byte-order-aware reads over untrusted bytes.
//!
//! Every binary reader goes through these helpers: a read past the end is `None`, never a panic,
//! and the byte order is a value ([`Endian`]) carried from the file header instead of a second
//! copy of each parser.

pub mod format;
pub mod page;

/// The byte order of the traced kernel (trace.dat header, perf.data magic, or the host for a
/// tracefs tree read on the machine that wrote it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Endian {
    /// Least significant byte first (x86, arm64).
    #[default]
    Little,
    /// Most significant byte first (s390x, some ppc64/mips).
    Big,
}

impl Endian {
    /// The byte order of the machine running vmxray.
    pub const fn native() -> Self {
        if cfg!(target_endian = "big") { Self::Big } else { Self::Little }
    }

    /// Reads a `u16` at `at`.
    #[inline]
    pub fn u16(self, bytes: &[u8], at: usize) -> Option<u16> {
        let raw: [u8; 2] = bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(match self {
            Self::Little => u16::from_le_bytes(raw),
            Self::Big => u16::from_be_bytes(raw),
        })
    }

    /// Reads a `u32` at `at`.
    #[inline]
    pub fn u32(self, bytes: &[u8], at: usize) -> Option<u32> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(match self {
            Self::Little => u32::from_le_bytes(raw),
            Self::Big => u32::from_be_bytes(raw),
        })
    }

    /// Reads a `u64` at `at`.
    #[inline]
    pub fn u64(self, bytes: &[u8], at: usize) -> Option<u64> {
        let raw: [u8; 8] = bytes.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(match self {
            Self::Little => u64::from_le_bytes(raw),
            Self::Big => u64::from_be_bytes(raw),
        })
    }

    /// Reads an unsigned integer of 1, 2, 4 or 8 bytes at `at`, zero-extended.
    #[inline]
    pub fn uint(self, bytes: &[u8], at: usize, size: usize) -> Option<u64> {
        match size {
            1 => bytes.get(at).map(|b| u64::from(*b)),
            2 => self.u16(bytes, at).map(u64::from),
            4 => self.u32(bytes, at).map(u64::from),
            8 => self.u64(bytes, at),
            _ => None,
        }
    }

    /// Encodes a `u16`.
    pub fn put_u16(self, v: u16) -> [u8; 2] {
        match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        }
    }

    /// Encodes a `u32`.
    pub fn put_u32(self, v: u32) -> [u8; 4] {
        match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        }
    }

    /// Encodes a `u64`.
    pub fn put_u64(self, v: u64) -> [u8; 8] {
        match self {
            Self::Little => v.to_le_bytes(),
            Self::Big => v.to_be_bytes(),
        }
    }
}

/// A forward cursor over a byte slice; every read is checked and advances only on success.
#[derive(Clone, Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    endian: Endian,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8], endian: Endian) -> Self {
        Self { bytes, pos: 0, endian }
    }

    /// A cursor at `pos`.
    pub fn at(bytes: &'a [u8], pos: usize, endian: Endian) -> Self {
        Self { bytes, pos, endian }
    }

    /// Current position.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Moves to `pos` (may be past the end; the next read then fails).
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos;
    }

    /// The byte order used.
    pub fn endian(&self) -> Endian {
        self.endian
    }

    /// Sets the byte order (after reading an endianness marker).
    pub fn set_endian(&mut self, endian: Endian) {
        self.endian = endian;
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Option<u8> {
        let v = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }

    /// Reads a `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        let v = self.endian.u16(self.bytes, self.pos)?;
        self.pos += 2;
        Some(v)
    }

    /// Reads a `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        let v = self.endian.u32(self.bytes, self.pos)?;
        self.pos += 4;
        Some(v)
    }

    /// Reads a `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        let v = self.endian.u64(self.bytes, self.pos)?;
        self.pos += 8;
        Some(v)
    }

    /// Takes `len` bytes.
    pub fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(len)?;
        let s = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    /// Takes `len` bytes where `len` comes from the file as a `u64`.
    pub fn take_u64_len(&mut self, len: u64) -> Option<&'a [u8]> {
        self.take(usize::try_from(len).ok()?)
    }

    /// Takes a NUL-terminated string (without the NUL).
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let rest = self.bytes.get(self.pos..)?;
        let nul = memchr::memchr(0, rest)?;
        let s = rest.get(..nul)?;
        self.pos += nul + 1;
        Some(s)
    }

    /// True when the next bytes are `tag`; consumes them if so.
    pub fn eat(&mut self, tag: &[u8]) -> bool {
        let end = self.pos.saturating_add(tag.len());
        if self.bytes.get(self.pos..end) == Some(tag) {
            self.pos = end;
            true
        } else {
            false
        }
    }
}

/// Converts a `u64` from a file into a `usize`, or `None` when it cannot be one.
#[inline]
pub fn to_usize(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_checked_and_ordered() {
        let b = [1, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(Endian::Little.u32(&b, 0), Some(0x0403_0201));
        assert_eq!(Endian::Big.u32(&b, 0), Some(0x0102_0304));
        assert_eq!(Endian::Little.u32(&b, 5), None);
        assert_eq!(Endian::Little.u64(&b, usize::MAX), None);
        let mut c = Cursor::new(b"ab\0cd", Endian::Little);
        assert_eq!(c.cstr(), Some(&b"ab"[..]));
        assert_eq!(c.cstr(), None);
        assert_eq!(c.take(2), Some(&b"cd"[..]));
    }

    #[test]
    fn a_reused_read_buffer_holds_exactly_the_bytes_read() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let path = std::env::temp_dir().join(format!("vmxray-read-into-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for src in [Source::File(file, 256), Source::Bytes(bytes.clone())] {
            let mut buf = vec![0xaa; 300];
            src.read_at_into(10, 20, &mut buf).unwrap();
            assert_eq!(buf, bytes[10..30], "shorter than the buffer was");
            src.read_at_into(100, 200, &mut buf).unwrap();
            assert_eq!(buf, bytes[100..], "cut at the end of the input");
            src.read_at_into(0, 256, &mut buf).unwrap();
            assert_eq!(buf, bytes, "longer than the buffer was");
            src.read_at_into(300, 8, &mut buf).unwrap();
            assert!(buf.is_empty(), "past the end");
        }
    }
}

/// A binary input read at positions: an open file (with its length), or the bytes of an input
/// that could only be read whole (stdin). Shared by the trace.dat and perf.data readers.
#[derive(Debug)]
pub(crate) enum Source {
    /// A file and its length.
    File(std::fs::File, u64),
    /// The whole input in memory.
    Bytes(Vec<u8>),
}

impl Source {
    /// The input's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::File(_, len) => *len,
            Self::Bytes(b) => b.len() as u64,
        }
    }

    /// [`Source::read_at`] into `buf` (replacing its contents), reusing its allocation: a
    /// decoding thread reads thousands of chunks, and a fresh buffer for each made the
    /// allocator hand back and fault in pages over and over. The bytes the buffer already
    /// holds are overwritten, not zeroed first: only a buffer that grows is zero-filled.
    pub(crate) fn read_at_into(
        &self,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let avail = self.len().saturating_sub(offset);
        let n = len.min(to_usize(avail).unwrap_or(usize::MAX));
        match self {
            Self::File(f, _) => {
                buf.truncate(n);
                buf.resize(n, 0);
                f.read_exact_at(buf, offset).inspect_err(|_| buf.clear())
            }
            Self::Bytes(b) => {
                buf.clear();
                let start = to_usize(offset).unwrap_or(usize::MAX);
                buf.extend_from_slice(b.get(start..start.saturating_add(n)).unwrap_or(&[]));
                Ok(())
            }
        }
    }

    /// Fills `buf` with the bytes at `offset` (an error when the input ends first).
    pub(crate) fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        match self {
            Self::File(f, _) => f.read_exact_at(buf, offset),
            Self::Bytes(b) => {
                let start = to_usize(offset).unwrap_or(usize::MAX);
                let bytes = b
                    .get(start..start.saturating_add(buf.len()))
                    .ok_or(std::io::ErrorKind::UnexpectedEof)?;
                buf.copy_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Reads up to `len` bytes at `offset`: fewer at the end of the input, none past it.
    pub(crate) fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        let avail = self.len().saturating_sub(offset);
        let n = len.min(to_usize(avail).unwrap_or(usize::MAX));
        match self {
            Self::File(f, _) => {
                let mut buf = vec![0u8; n];
                f.read_exact_at(&mut buf, offset)?;
                Ok(buf)
            }
            Self::Bytes(b) => {
                let start = to_usize(offset).unwrap_or(usize::MAX);
                Ok(b.get(start..start.saturating_add(n)).unwrap_or(&[]).to_vec())
            }
        }
    }
}
