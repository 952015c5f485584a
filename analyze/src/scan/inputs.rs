//! Which traces a scan reads: arguments (files, directories, globs) expanded into
//! [`ScanInput`]s with their stable trace ids, and [`Shard`]s of that list.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// One trace to scan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanInput {
    /// Where it is.
    pub path: PathBuf,
    /// Its id: the path relative to the argument it was found under (`/`-separated), the path
    /// as given for a file argument. Unique within a scan.
    pub trace: String,
    /// The `host=NAME` component of the id or of the argument, if any.
    pub host: Option<String>,
    /// The `vm=NAME` component of the id or of the argument, if any.
    pub vm: Option<String>,
    /// Size in bytes (0 for a directory or a missing file); larger traces are scheduled first.
    pub bytes: u64,
}

/// File names skipped while walking a directory (hidden entries are skipped too); a file named
/// directly on the command line is always read.
pub const DEFAULT_EXCLUDES: &[&str] =
    &["*.json", "*.jsonl", "*.md", "*.toml", "*.rs", "*.py", "*.sh", "*.parquet", "*.csv"];

/// An argument could not be expanded.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A glob pattern is malformed.
    #[error("Bad pattern `{pattern}`")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// Why.
        #[source]
        source: glob::PatternError,
    },
    /// A directory could not be listed.
    #[error("Cannot list {}", path.display())]
    Walk {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How arguments are expanded.
#[derive(Clone, Debug)]
pub struct DiscoverOptions {
    /// File-name patterns skipped in directories (see [`DEFAULT_EXCLUDES`]).
    pub exclude: Vec<glob::Pattern>,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        Self {
            exclude: DEFAULT_EXCLUDES.iter().filter_map(|p| glob::Pattern::new(p).ok()).collect(),
        }
    }
}

/// Expands `args` into traces, sorted by id.
///
/// - a **file** is one trace, its id the path as given (without a leading `./`);
/// - a **directory** is walked recursively (sorted, hidden entries and [`DiscoverOptions::exclude`]
///   skipped); a directory that is itself a copied tracefs tree (`per_cpu/cpuN/trace_pipe_raw`) is
///   one trace, and a `tracefs/` folder beside `*.bin` page dumps is their formats, not a trace;
///   ids are relative to the directory argument;
/// - anything else containing `*`, `?` or `[` is a **glob**; ids are relative to the pattern's
///   literal leading directories;
/// - a path that does not exist stays in the list (it is reported as a failed trace).
///
/// When two arguments yield the same id (`host1/` and `host2/` both holding `trace.dat`), each of
/// those ids is prefixed with its argument as given.
pub fn discover(args: &[PathBuf], opts: &DiscoverOptions) -> Result<Vec<ScanInput>, InputError> {
    // (argument, path, id relative to the argument)
    let mut found: Vec<(PathBuf, PathBuf, String)> = Vec::new();
    for arg in args {
        if arg.is_dir() {
            walk(arg, arg, opts, &mut found)?;
        } else if arg.exists() || !is_glob(arg) {
            found.push((arg.clone(), arg.clone(), display_id(arg)));
        } else {
            let pattern = arg.to_string_lossy().into_owned();
            let base = literal_base(arg);
            let paths = glob::glob(&pattern)
                .map_err(|source| InputError::Pattern { pattern: pattern.clone(), source })?;
            for path in paths.filter_map(Result::ok) {
                if path.is_dir() {
                    walk(&base, &path, opts, &mut found)?;
                } else {
                    found.push((base.clone(), path.clone(), relative_id(&base, &path)));
                }
            }
        }
    }
    // Same file reached twice: keep one.
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found.dedup_by(|a, b| a.1 == b.1);
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (_, _, id) in &found {
        *per_id.entry(id.clone()).or_default() += 1;
    }
    let mut inputs: Vec<ScanInput> = found
        .into_iter()
        .map(|(arg, path, id)| {
            let trace = if per_id[&id] > 1 {
                format!("{}/{id}", display_id(&arg).trim_end_matches('/'))
            } else {
                id
            };
            let labels = |key: &str| label(&trace, key).or_else(|| label(&display_id(&arg), key));
            let bytes = std::fs::metadata(&path).map(|m| if m.is_file() { m.len() } else { 0 });
            ScanInput {
                host: labels("host"),
                vm: labels("vm"),
                bytes: bytes.unwrap_or(0),
                path,
                trace,
            }
        })
        .collect();
    inputs.sort_by(|a, b| a.trace.cmp(&b.trace));
    Ok(inputs)
}

fn walk(
    base: &Path,
    dir: &Path,
    opts: &DiscoverOptions,
    out: &mut Vec<(PathBuf, PathBuf, String)>,
) -> Result<(), InputError> {
    if is_tracefs_tree(dir) {
        let id = if dir == base {
            display_id(base).trim_end_matches('/').to_owned()
        } else {
            relative_id(base, dir)
        };
        out.push((base.to_owned(), dir.to_owned(), id));
        return Ok(());
    }
    let walk_err = |source| InputError::Walk { path: dir.to_owned(), source };
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(walk_err)?.collect::<Result<_, _>>().map_err(walk_err)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    let has_page_dumps = entries
        .iter()
        .any(|e| e.path().extension().is_some_and(|x| x == "bin") && e.path().is_file());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            // The formats of the page dumps beside it, not a trace.
            if name == "tracefs" && has_page_dumps {
                continue;
            }
            walk(base, &path, opts, out)?;
        } else {
            // A pattern matches the file name, or the path below the argument
            // (`excerpts/*`).
            let id = relative_id(base, &path);
            if !opts.exclude.iter().any(|p| p.matches(&name) || p.matches(&id)) {
                out.push((base.to_owned(), path.clone(), id));
            }
        }
    }
    Ok(())
}

/// A copied tracefs tree with per-CPU raw buffers: one trace.
fn is_tracefs_tree(dir: &Path) -> bool {
    dir.join("per_cpu").is_dir() && dir.join("events").is_dir()
}

fn is_glob(path: &Path) -> bool {
    path.to_string_lossy().contains(['*', '?', '['])
}

/// The leading components of a pattern that contain no glob character.
fn literal_base(pattern: &Path) -> PathBuf {
    let mut base = PathBuf::new();
    for component in pattern.components() {
        if is_glob(Path::new(component.as_os_str())) {
            break;
        }
        base.push(component);
    }
    base
}

fn display_id(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    text.strip_prefix("./").map(str::to_owned).unwrap_or(text)
}

fn relative_id(base: &Path, path: &Path) -> String {
    match path.strip_prefix(base) {
        Ok(rel) if !rel.as_os_str().is_empty() => display_id(rel),
        Ok(_) | Err(_) => display_id(path),
    }
}

/// `NAME` from a `key=NAME` path component.
fn label(id: &str, key: &str) -> Option<String> {
    id.split('/').find_map(|c| c.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned)
}

/// One of N deterministic parts of the input list: trace `t` belongs to shard
/// `fnv1a64(t) % N + 1`, so N machines given the same arguments scan disjoint sets whose union is
/// the whole list, whatever order the files were listed in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 1-based index.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// True when the trace id falls in this shard.
    pub fn contains(self, trace: &str) -> bool {
        fnv1a64(trace.as_bytes()) % u64::from(self.count) == u64::from(self.index - 1)
    }
}

/// A `--shard` value that is not `K/N` with 1 ≤ K ≤ N.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Bad shard `{0}`: expected K/N with 1 <= K <= N (e.g. 2/8)")]
pub struct BadShard(pub String);

impl FromStr for Shard {
    type Err = BadShard;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadShard(s.to_owned());
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// 64-bit FNV-1a: stable across platforms, releases and runs (unlike `std`'s `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_list() {
        let ids: Vec<String> = (0..1000).map(|i| format!("host-{i}/trace.dat")).collect();
        let shards: Vec<Shard> = (1..=4).map(|k| format!("{k}/4").parse().unwrap()).collect();
        let mut sizes = [0; 4];
        for id in &ids {
            let owners: Vec<usize> = (0..4).filter(|&k| shards[k].contains(id)).collect();
            assert_eq!(owners.len(), 1, "{id} in {owners:?}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 200), "{sizes:?}");
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn shard_syntax() {
        assert_eq!("2/8".parse(), Ok(Shard { index: 2, count: 8 }));
        for bad in ["0/4", "5/4", "1", "a/b", "1/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn labels_and_ids() {
        assert_eq!(label("host=a1/vm=web/trace.dat", "host").as_deref(), Some("a1"));
        assert_eq!(label("host=a1/vm=web/trace.dat", "vm").as_deref(), Some("web"));
        assert_eq!(label("hosts/trace.dat", "host"), None);
        assert_eq!(literal_base(Path::new("fleet/*/t*.dat")), PathBuf::from("fleet"));
        assert_eq!(relative_id(Path::new("fleet"), Path::new("fleet/h1/t.dat")), "h1/t.dat");
        assert_eq!(display_id(Path::new("./x/t.dat")), "x/t.dat");
    }
}
