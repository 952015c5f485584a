//! A copied tracefs tree and raw ring-buffer page dumps.
//!
//! Two layouts are read:
//!
//! - **a tracefs tree** (`vmxray dump DIR`): `DIR/events/header_page`, `DIR/events/header_event`,
//!   `DIR/events/<sys>/<event>/format`, `DIR/trace_clock`, optional `DIR/saved_cmdlines`, and the
//!   page dumps `DIR/per_cpu/cpuN/trace_pipe_raw` (what `cat trace_pipe_raw > file` gives);
//! - **loose page files next to a tree** (`vmxray dump raw/` or `vmxray dump raw/x_cpu1.bin`):
//!   a directory holding `tracefs/` (the tree) and `*.bin` page dumps. The CPU of a dump is the
//!   number after the last `cpu` in its file name (`sample_raw_lm_cpu1.bin` is CPU 1), 0 when the
//!   name has none.
//!
//! The pages are in the byte order of the machine that wrote them, which a tracefs copy does not
//! record: this reader assumes the host's.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::bin::Endian;
use crate::bin::format::{EventFormats, FormatError, PageLayout};
use crate::read::decode::{DecodeCtx, StreamBase, parse_cmdlines};
use crate::read::merge::{Batch, Job, Jobs, Merger};
use crate::read::{
    Clock, EventReader, InputFormat, Location, ReadError, ReadOptions, ReadStats, TraceMeta,
    input_name,
};
use vmxray_events::event::{Comm, Event};

/// Pages decoded per batch (bounds memory per CPU).
const PAGES_PER_BATCH: u64 = 64;

/// A tracefs tree or page dump could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// The directory has no `events/header_page`.
    #[error("{path}: not a tracefs tree (no events/header_page)")]
    NotTracefs {
        /// The directory.
        path: PathBuf,
    },
    /// A file could not be read.
    #[error("Cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A format file is malformed.
    #[error("{path}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// No page dump was found.
    #[error("{path}: no per_cpu/cpuN/trace_pipe_raw or *.bin page dumps")]
    NoPages {
        /// The directory.
        path: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, TracefsError> {
    std::fs::read(path).map_err(|source| TracefsError::Io { path: path.to_owned(), source })
}

/// The metadata of a tracefs tree: page layout, event formats, clock and comms.
#[derive(Clone, Debug)]
pub struct TracefsTree {
    /// The tree's root.
    pub root: PathBuf,
    /// The sub-buffer layout from `events/header_page`.
    pub layout: PageLayout,
    /// Every `events/*/*/format`.
    pub formats: Arc<EventFormats>,
    /// The `[selected]` clock of `trace_clock` (`local` when the file is missing).
    pub clock: Clock,
    /// `saved_cmdlines`, when copied.
    pub comms: Arc<HashMap<i32, Comm>>,
}

impl TracefsTree {
    /// True when `dir` looks like a tracefs tree.
    pub fn is_tree(dir: &Path) -> bool {
        dir.join("events/header_page").is_file()
    }

    /// Loads the tree at `root`.
    pub fn load(root: &Path) -> Result<Self, TracefsError> {
        if !Self::is_tree(root) {
            return Err(TracefsError::NotTracefs { path: root.to_owned() });
        }
        let endian = Endian::native();
        let hp_path = root.join("events/header_page");
        let hp = read(&hp_path)?;
        let he = std::fs::read(root.join("events/header_event")).ok();
        let layout = PageLayout::parse(&hp, he.as_deref(), endian)
            .map_err(|source| TracefsError::Format { path: hp_path, source })?;
        let mut formats = EventFormats::new(endian, layout.long_size());
        let events = root.join("events");
        let mut systems: Vec<_> = std::fs::read_dir(&events)
            .map_err(|source| TracefsError::Io { path: events.clone(), source })?
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .collect();
        systems.sort_by_key(|e| e.file_name());
        for sys in systems {
            let system = sys.file_name().to_string_lossy().into_owned();
            let Ok(entries) = std::fs::read_dir(sys.path()) else { continue };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(|e| e.file_name());
            for ev in entries {
                let path = ev.path().join("format");
                if !path.is_file() {
                    continue;
                }
                let text = read(&path)?;
                formats
                    .add_text(&system, &text)
                    .map_err(|source| TracefsError::Format { path: path.clone(), source })?;
            }
        }
        let clock = std::fs::read_to_string(root.join("trace_clock"))
            .map(|t| Clock::from_name(&t))
            .unwrap_or(Clock::Local);
        let comms = std::fs::read(root.join("saved_cmdlines"))
            .map(|t| parse_cmdlines(&t))
            .unwrap_or_else(|_| parse_cmdlines(b""));
        Ok(Self {
            root: root.to_owned(),
            layout,
            formats: Arc::new(formats),
            clock,
            comms: Arc::new(comms),
        })
    }
}

/// A file of raw pages from one CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageFile {
    /// The CPU whose buffer the pages are from.
    pub cpu: u32,
    /// The dump.
    pub path: PathBuf,
}

impl PageFile {
    /// A dump whose CPU is the number after the last `cpu` in its file name (else 0).
    pub fn from_name(path: &Path) -> Self {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let cpu = name
            .rmatch_indices("cpu")
            .find_map(|(i, _)| {
                let digits: String =
                    name.get(i + 3..)?.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .unwrap_or(0);
        Self { cpu, path: path.to_owned() }
    }
}

/// Where the pages of a tracefs input are.
#[derive(Clone, Debug)]
pub struct TracefsInput {
    /// The tree with the formats.
    pub tree: PathBuf,
    /// The page dumps.
    pub pages: Vec<PageFile>,
}

impl TracefsInput {
    /// Recognizes `path`: a tracefs tree with `per_cpu/cpuN/trace_pipe_raw`, a directory with a
    /// `tracefs/` tree and `*.bin` dumps, or one `.bin` dump next to a `tracefs/` tree.
    pub fn locate(path: &Path) -> Option<Self> {
        if path.is_dir() {
            if TracefsTree::is_tree(path) {
                let mut pages = Vec::new();
                if let Ok(dirs) = std::fs::read_dir(path.join("per_cpu")) {
                    for d in dirs.filter_map(Result::ok) {
                        let raw = d.path().join("trace_pipe_raw");
                        let name = d.file_name().to_string_lossy().into_owned();
                        if let (true, Some(Ok(cpu))) =
                            (raw.is_file(), name.strip_prefix("cpu").map(str::parse::<u32>))
                        {
                            pages.push(PageFile { cpu, path: raw });
                        }
                    }
                }
                pages.sort_by(|a, b| (a.cpu, &a.path).cmp(&(b.cpu, &b.path)));
                return Some(Self { tree: path.to_owned(), pages });
            }
            let tree = path.join("tracefs");
            if TracefsTree::is_tree(&tree) {
                let mut pages: Vec<PageFile> = std::fs::read_dir(path)
                    .ok()?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "bin"))
                    .map(|p| PageFile::from_name(&p))
                    .collect();
                pages.sort_by(|a, b| (a.cpu, &a.path).cmp(&(b.cpu, &b.path)));
                return Some(Self { tree, pages });
            }
            return None;
        }
        let tree = path.parent()?.join("tracefs");
        (path.extension().is_some_and(|x| x == "bin") && TracefsTree::is_tree(&tree))
            .then(|| Self { tree, pages: vec![PageFile::from_name(path)] })
    }
}

/// Reads page dumps against a tracefs tree, merging the CPUs by timestamp.
pub struct TracefsReader {
    meta: TraceMeta,
    stats: ReadStats,
    merger: Merger,
    formats: Arc<EventFormats>,
}

struct PageChunk {
    cpu: u32,
    file: Arc<File>,
    offset: u64,
    len: usize,
}

impl TracefsReader {
    /// Opens a tracefs input found by [`TracefsInput::locate`].
    pub fn open(
        input: &TracefsInput,
        name: Arc<str>,
        opts: ReadOptions,
    ) -> Result<Self, ReadError> {
        let err = |e: TracefsError| ReadError::new(&name, Location::Input, e);
        let tree = TracefsTree::load(&input.tree).map_err(err)?;
        if input.pages.is_empty() {
            return Err(err(TracefsError::NoPages { path: input.tree.clone() }));
        }
        let ctx = Arc::new(DecodeCtx {
            input: Arc::clone(&name),
            formats: Arc::clone(&tree.formats),
            layout: tree.layout,
            comms: Arc::clone(&tree.comms),
            count_only: opts.count_only,
        });
        let page = u64::from(tree.layout.page_size);
        let mut producers: Vec<(u32, Jobs)> = Vec::new();
        for pf in &input.pages {
            let file = File::open(&pf.path)
                .map_err(|source| err(TracefsError::Io { path: pf.path.clone(), source }))?;
            let size = file
                .metadata()
                .map_err(|source| err(TracefsError::Io { path: pf.path.clone(), source }))?
                .len();
            let file = Arc::new(file);
            let step = page.saturating_mul(PAGES_PER_BATCH).max(1);
            let work: Vec<PageChunk> = (0..size.div_ceil(step))
                .map(|i| {
                    let offset = i * step;
                    let len = usize::try_from(step.min(size - offset)).unwrap_or(0);
                    PageChunk { cpu: pf.cpu, file: Arc::clone(&file), offset, len }
                })
                .collect();
            let ctx = Arc::clone(&ctx);
            let path = pf.path.clone();
            let jobs = work.into_iter().map(move |w: PageChunk| {
                let ctx = Arc::clone(&ctx);
                let path = path.clone();
                Box::new(move || {
                    let mut batch = Batch::default();
                    let mut buf = vec![0u8; w.len];
                    match w.file.read_exact_at(&mut buf, w.offset) {
                        Ok(()) => {
                            ctx.decode_pages(w.cpu, &buf, StreamBase::File(w.offset), &mut batch)
                        }
                        Err(source) => batch.problem(ReadError::new(
                            &ctx.input,
                            Location::Offset(w.offset),
                            TracefsError::Io { path, source },
                        )),
                    }
                    batch
                }) as Job
            });
            producers.push((pf.cpu, Box::new(jobs) as Jobs));
        }
        let mut stats = ReadStats::default();
        let merger = Merger::new(producers, true, opts.permissive, &mut stats);
        let cpus = input.pages.iter().map(|p| p.cpu + 1).max();
        let meta = TraceMeta {
            input: name,
            format: InputFormat::TracefsDir,
            clock: tree.clock,
            cpus,
            kernel: None,
            excerpt: false,
        };
        Ok(Self { meta, stats, merger, formats: Arc::clone(&tree.formats) })
    }

    /// Opens `path` (see [`TracefsInput::locate`]).
    pub fn open_path(path: &Path, opts: ReadOptions) -> Result<Self, ReadError> {
        let name = input_name(path);
        let input = TracefsInput::locate(path).ok_or_else(|| {
            ReadError::new(
                &name,
                Location::Input,
                TracefsError::NotTracefs { path: path.to_owned() },
            )
        })?;
        Self::open(&input, name, opts)
    }
}

impl Iterator for TracefsReader {
    type Item = Result<Event, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.merger.next(&mut self.stats)
    }
}

impl EventReader for TracefsReader {
    fn meta(&self) -> &TraceMeta {
        &self.meta
    }
    fn stats(&self) -> &ReadStats {
        &self.stats
    }
    fn event_formats(&self) -> Option<&Arc<EventFormats>> {
        Some(&self.formats)
    }
    fn counted_before(&self) -> u64 {
        self.merger.counted_before()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_from_file_name() {
        assert_eq!(PageFile::from_name(Path::new("x/sample_raw_lm_cpu1.bin")).cpu, 1);
        assert_eq!(
            PageFile::from_name(Path::new("sample_raw_lost_notstored_cpu1_page0.bin")).cpu,
            1
        );
        assert_eq!(PageFile::from_name(Path::new("pages.bin")).cpu, 0);
    }
}
