//! Every sample file has a provenance row in samples/README.md, and every row names a file
//! that exists.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

fn samples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under samples/ that are sample data (not the crate's own sources and docs).
fn sample_files(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(base).unwrap_or(&path).to_string_lossy().replace('\\', "/");
        if path.is_dir() {
            if !matches!(rel.as_str(), "src" | "tests" | "benches" | "examples" | "target") {
                sample_files(&path, base, out);
            }
        } else if !matches!(rel.as_str(), "Cargo.toml" | "README.md") {
            out.insert(rel);
        }
    }
}

/// Rows `| \`file\` | ... |` under a heading `## <dir>/ ...`, as `<dir>/<file>`.
fn listed_files(readme: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut dir = String::new();
    for line in readme.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            dir = heading.split_whitespace().next().unwrap_or("").trim_end_matches('/').to_owned();
        } else if let Some((file, _)) = line.strip_prefix("| `").and_then(|r| r.split_once('`')) {
            out.insert(format!("{dir}/{file}"));
        }
    }
    out
}

#[test]
fn readme_and_folder_agree() {
    let base = samples_dir();
    let readme = fs::read_to_string(base.join("README.md")).expect("samples/README.md");
    let listed = listed_files(&readme);
    let mut present = BTreeSet::new();
    sample_files(&base, &base, &mut present);
    // A row naming a folder (`tracefs/`) covers the tree below it.
    let covered = |file: &String| {
        listed.contains(file)
            || listed.iter().any(|row| row.ends_with('/') && file.starts_with(row.as_str()))
    };
    let unlisted: Vec<_> = present.iter().filter(|f| !covered(f)).collect();
    let missing: Vec<_> = listed
        .iter()
        .filter(|row| {
            if row.ends_with('/') {
                !present.iter().any(|f| f.starts_with(row.as_str()))
            } else {
                !present.contains(*row)
            }
        })
        .collect();
    assert!(
        unlisted.is_empty(),
        "sample files without a provenance row in samples/README.md: {unlisted:?}"
    );
    assert!(
        missing.is_empty(),
        "rows in samples/README.md naming files that do not exist: {missing:?}"
    );
}

#[test]
fn listing_parser_reads_nested_dirs() {
    let listed = listed_files(
        "## real/text/ — x\n| file | how |\n|---|---|\n| `a.txt` | made |\n## sim/\n| `b.txt` | y |\n",
    );
    assert_eq!(listed, BTreeSet::from(["real/text/a.txt".to_owned(), "sim/b.txt".to_owned()]));
}
