//! A compressed CPU run's chunk list, walked only as far as a reader has got.
//!
//! A v7 compressed run is a u32 chunk count followed by `{u32 zsize, u32 usize, zsize bytes}`
//! chunks: finding chunk `k` means reading the headers of the `k` before it. A 10^8-event
//! trace has ~2×10^5 chunks, and walking them all before the first event took 0.5–2 s — the
//! whole wait of the TUI's first screen. The walk therefore goes header by header as readers
//! ask for chunks, and what it found is kept (per run, in the [`TraceDat`]) for every later
//! reader, so each header is still read once.
//!
//! ```text
//!  run:  [count][h0|z0 bytes][h1|z1 bytes][h2|z2 ...]        h = 8-byte header
//!  walk: listed = [w0, w1]   next = offset of h2   (h2.. read when someone asks for w2)
//! ```
//!
//! Small chunks' headers are read through a window (one read covers the headers of a few
//! dozen chunks), not one read each. Once a chunk takes more than a sixteenth of the window,
//! the next header is read alone: trace-cmd's chunks of ten pages compress to a few KiB, and a
//! window over them copied (on the merging thread) ~6 KiB of compressed data for each header,
//! data the decoder reads again.

use super::{CpuData, Endian, Location, Source, TraceDatError, Work};

/// Bytes read at once while walking headers.
const WINDOW: usize = 64 << 10;

/// How far one compressed run's chunk list is known.
#[derive(Debug)]
pub(super) struct ChunkWalk {
    cpu: u32,
    /// The chunks listed so far, in order.
    listed: Vec<Work>,
    /// File offset of the next header.
    next: u64,
    /// End of the run (the recorded size counts from after the chunk count).
    end: u64,
    /// Headers the chunk count still promises.
    left: u32,
    /// Uncompressed bytes of the chunks listed.
    stream_offset: u64,
    /// The list is complete.
    done: bool,
    /// The bytes at `window_at` (dropped once the list is complete).
    window: Vec<u8>,
    window_at: u64,
    /// From the last header listed to the next: how far apart headers are.
    stride: u64,
}

impl ChunkWalk {
    /// Starts the walk of run `d` (reads its chunk count).
    pub(super) fn start(
        src: &Source,
        endian: Endian,
        d: &CpuData,
    ) -> Result<Self, (Location, TraceDatError)> {
        let hdr = src.read(d.offset, 4).map_err(|er| (Location::Offset(d.offset), er))?;
        let count = endian.u32(&hdr, 0).ok_or((
            Location::Offset(d.offset),
            TraceDatError::Truncated { expected: "chunk count" },
        ))?;
        let next = d.offset.saturating_add(4);
        Ok(Self {
            cpu: d.cpu,
            listed: Vec::new(),
            next,
            end: next.saturating_add(d.size),
            left: count,
            stream_offset: 0,
            done: false,
            window: Vec::new(),
            window_at: 0,
            stride: 0,
        })
    }

    /// Chunk `index`, walking the headers up to it; None past the end of the list.
    pub(super) fn get(
        &mut self,
        src: &Source,
        endian: Endian,
        index: usize,
    ) -> Result<Option<Work>, (Location, TraceDatError)> {
        while self.listed.len() <= index && !self.done {
            self.step(src, endian)?;
        }
        Ok(self.listed.get(index).copied())
    }

    /// The whole list.
    pub(super) fn all(
        &mut self,
        src: &Source,
        endian: Endian,
    ) -> Result<&[Work], (Location, TraceDatError)> {
        while !self.done {
            self.step(src, endian)?;
        }
        Ok(&self.listed)
    }

    /// Chunks listed so far.
    #[cfg(test)]
    pub(super) fn listed(&self) -> usize {
        self.listed.len()
    }

    /// The 8 header bytes at `pos` (fewer at the end of the file).
    fn header(&mut self, src: &Source, pos: u64) -> Result<[Option<u8>; 8], TraceDatError> {
        let in_window = pos
            .checked_sub(self.window_at)
            .and_then(|rel| usize::try_from(rel).ok())
            .filter(|rel| rel.saturating_add(8) <= self.window.len());
        let rel = match in_window {
            Some(rel) => rel,
            None => {
                let want = if self.stride > (WINDOW / 16) as u64 { 8 } else { WINDOW };
                src.read_at_into(pos, want, &mut self.window).map_err(TraceDatError::Io)?;
                self.window_at = pos;
                0
            }
        };
        let mut out = [None; 8];
        for (k, b) in out.iter_mut().enumerate() {
            *b = self.window.get(rel + k).copied();
        }
        Ok(out)
    }

    /// Lists one more chunk (or finds the end of the list), as [`super::TraceDat`]'s whole
    /// walk did: a header cut short by the end of the file becomes a last item that reports
    /// the truncation when it is decoded.
    fn step(&mut self, src: &Source, endian: Endian) -> Result<(), (Location, TraceDatError)> {
        if self.left == 0 || self.next >= self.end {
            self.finish();
            return Ok(());
        }
        let pos = self.next;
        let h = self.header(src, pos).map_err(|er| (Location::Offset(pos), er))?;
        let bytes: Vec<u8> = h.iter().map_while(|b| *b).collect();
        let index = u32::try_from(self.listed.len()).unwrap_or(u32::MAX);
        let (Some(zsize), Some(usize)) = (endian.u32(&bytes, 0), endian.u32(&bytes, 4)) else {
            // Keep what came before; the truncation is reported when reached.
            self.listed.push(Work {
                index,
                cpu: self.cpu,
                file_offset: pos,
                len: 8,
                usize: Some(u64::MAX),
                stream_offset: self.stream_offset,
            });
            self.finish();
            return Ok(());
        };
        self.listed.push(Work {
            index,
            cpu: self.cpu,
            file_offset: pos.saturating_add(8),
            len: u64::from(zsize),
            usize: Some(u64::from(usize)),
            stream_offset: self.stream_offset,
        });
        self.stream_offset = self.stream_offset.saturating_add(u64::from(usize));
        self.stride = 8 + u64::from(zsize);
        self.next = pos.saturating_add(self.stride);
        self.left -= 1;
        Ok(())
    }

    fn finish(&mut self) {
        self.done = true;
        self.window = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compressed run at offset 16: the chunk count, then `sizes.len()` chunks of
    /// `(zsize, usize)` with `zsize` filler bytes each; `cut` bytes dropped from the end.
    fn run(sizes: &[(u32, u32)], count: u32, cut: usize) -> (Source, CpuData) {
        let mut bytes = vec![0xaa; 16];
        bytes.extend_from_slice(&count.to_le_bytes());
        for (z, u) in sizes {
            bytes.extend_from_slice(&z.to_le_bytes());
            bytes.extend_from_slice(&u.to_le_bytes());
            bytes.extend(std::iter::repeat_n(0x55, usize::try_from(*z).unwrap()));
        }
        let size = bytes.len() as u64 - 20;
        bytes.truncate(bytes.len() - cut);
        (Source::Bytes(bytes), CpuData { cpu: 3, offset: 16, size })
    }

    fn whole(src: &Source, d: &CpuData) -> Vec<Work> {
        let mut w = ChunkWalk::start(src, Endian::Little, d).unwrap();
        w.all(src, Endian::Little).unwrap().to_vec()
    }

    fn key(w: &Work) -> (u32, u32, u64, u64, Option<u64>, u64) {
        (w.index, w.cpu, w.file_offset, w.len, w.usize, w.stream_offset)
    }

    #[test]
    fn a_walk_in_steps_lists_what_the_whole_walk_lists_reading_only_what_it_needs() {
        // Chunks larger than the window too, so that headers fall outside it.
        let sizes: Vec<(u32, u32)> =
            (0..40u32).map(|k| (if k % 7 == 0 { 70_000 } else { 100 + k * 13 }, 40960)).collect();
        let (src, d) = run(&sizes, 40, 0);
        let all = whole(&src, &d);
        assert_eq!(all.len(), 40);
        let mut off = 20u64;
        for (k, w) in all.iter().enumerate() {
            assert_eq!(w.index as usize, k);
            assert_eq!(w.file_offset, off + 8);
            assert_eq!(w.len, u64::from(sizes[k].0));
            assert_eq!(w.stream_offset, 40960 * k as u64);
            off += 8 + u64::from(sizes[k].0);
        }
        let mut walk = ChunkWalk::start(&src, Endian::Little, &d).unwrap();
        assert_eq!(walk.get(&src, Endian::Little, 2).unwrap().map(|w| key(&w)), Some(key(&all[2])));
        // Only the headers up to the one asked for are listed.
        assert_eq!(walk.listed.len(), 3);
        assert!(!walk.done);
        for k in [9, 3, 39, 0] {
            let got = walk.get(&src, Endian::Little, k).unwrap().unwrap();
            assert_eq!(key(&got), key(&all[k]));
        }
        assert!(walk.get(&src, Endian::Little, 40).unwrap().is_none());
        assert!(walk.done);
        assert!(walk.window.is_empty(), "the window is dropped once the list is complete");
    }

    #[test]
    fn a_cut_header_ends_the_list_with_a_truncated_item_and_the_count_bounds_it() {
        let sizes = [(50, 4096), (60, 4096), (70, 4096)];
        // The file ends inside the third header: headers read through the window, and read
        // alone after chunks too large for it.
        for (sizes, tail) in [(sizes, 70), ([(50, 4096), (6000, 4096), (7000, 4096)], 7000)] {
            let (src, d) = run(&sizes, 3, tail + 5);
            let all = whole(&src, &d);
            assert_eq!(all.len(), 3);
            assert_eq!(all[1].file_offset, 20 + 8 + 50 + 8);
            assert_eq!(all[2].file_offset, all[1].file_offset + u64::from(sizes[1].0));
            assert_eq!(all[2].usize, Some(u64::MAX));
            assert_eq!(all[2].len, 8);
        }
        // A count smaller than the chunks present stops the list at the count.
        let (src, d) = run(&sizes, 2, 0);
        assert_eq!(whole(&src, &d).len(), 2);
        // No chunk count at all is an error at the start.
        let (src, mut d) = run(&[], 0, 4);
        d.size = 0;
        assert!(ChunkWalk::start(&src, Endian::Little, &d).is_err());
    }
}
