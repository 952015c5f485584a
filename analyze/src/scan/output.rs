//! Where scan tables go: a dataset directory in a hive layout (Parquet, CSV or JSON Lines), or
//! memory for printing.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use polars::prelude::*;

use super::tables::{Chunk, Table, TraceLabels};

/// A table chunk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or directory could not be written.
    #[error("Cannot write {}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// polars could not build or encode the table.
    #[error("Cannot encode {}", path.display())]
    Encode {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: PolarsError,
    },
}

/// Receives the tables of each trace as the scan produces them (from several threads at once).
pub trait TableSink: Sync {
    /// Whether rows of `table` are wanted at all (the scan skips building the others).
    fn wants(&self, table: Table) -> bool;
    /// Called once per trace before its first chunk (a dataset drops an earlier run's parts).
    fn begin(&self, labels: &TraceLabels) -> Result<(), SinkError>;
    /// One chunk of a trace's table; `part` counts from 0 per trace and table.
    fn write(&self, labels: &TraceLabels, part: u32, chunk: Chunk) -> Result<(), SinkError>;
}

/// File formats of a dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Parquet, zstd-compressed.
    Parquet,
    /// CSV with a header row; nulls are empty fields.
    Csv,
    /// JSON Lines: one object per row, keys in schema order, nulls as `null`.
    Jsonl,
}

impl OutputFormat {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
            Self::Jsonl => "jsonl",
        }
    }
}

/// Writes `DIR/table=NAME/trace=ID/part-N.EXT`, where `ID` is the trace id with every byte
/// outside `[A-Za-z0-9._-]` written `%XX` (Hive's partition-value escaping).
#[derive(Debug)]
pub struct DatasetWriter {
    dir: PathBuf,
    format: OutputFormat,
}

impl DatasetWriter {
    /// A writer into `dir` (created as needed).
    pub fn new(dir: impl Into<PathBuf>, format: OutputFormat) -> Self {
        Self { dir: dir.into(), format }
    }

    /// The directory of one trace's table.
    pub fn partition(&self, table: Table, trace: &str) -> PathBuf {
        self.dir.join(format!("table={}", table.name())).join(format!("trace={}", escape(trace)))
    }
}

/// Hive partition-value escaping: bytes outside `[A-Za-z0-9._-]` become `%XX`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TableSink for DatasetWriter {
    fn wants(&self, _table: Table) -> bool {
        true
    }

    fn begin(&self, labels: &TraceLabels) -> Result<(), SinkError> {
        for table in Table::ALL {
            let dir = self.partition(table, &labels.trace);
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(SinkError::Io { path: dir, source }),
            }
        }
        Ok(())
    }

    fn write(&self, labels: &TraceLabels, part: u32, chunk: Chunk) -> Result<(), SinkError> {
        let dir = self.partition(chunk.table(), &labels.trace);
        fs::create_dir_all(&dir).map_err(|source| SinkError::Io { path: dir.clone(), source })?;
        let path = dir.join(format!("part-{part}.{}", self.format.extension()));
        let mut frame = chunk
            .to_frame(labels)
            .map_err(|source| SinkError::Encode { path: path.clone(), source })?;
        write_frame(&path, &mut frame, self.format)
    }
}

/// Writes one frame to `path` in `format`.
pub fn write_frame(
    path: &Path,
    frame: &mut DataFrame,
    format: OutputFormat,
) -> Result<(), SinkError> {
    let io_err = |source| SinkError::Io { path: path.to_owned(), source };
    let enc_err = |source| SinkError::Encode { path: path.to_owned(), source };
    let file = File::create(path).map_err(io_err)?;
    let mut out = BufWriter::new(file);
    match format {
        OutputFormat::Parquet => {
            ParquetWriter::new(&mut out)
                .with_compression(ParquetCompression::Zstd(None))
                .finish(frame)
                .map_err(enc_err)?;
        }
        OutputFormat::Csv => {
            CsvWriter::new(&mut out).include_header(true).finish(frame).map_err(enc_err)?;
        }
        OutputFormat::Jsonl => write_jsonl(&mut out, frame).map_err(io_err)?,
    }
    out.flush().map_err(io_err)
}

/// JSON Lines: one object per row, keys in column order.
pub fn write_jsonl(out: &mut impl Write, frame: &DataFrame) -> std::io::Result<()> {
    let names: Vec<String> = frame
        .get_column_names()
        .iter()
        .map(|n| serde_json::to_string(n.as_str()).unwrap_or_default())
        .collect();
    let columns = frame.columns();
    let mut line = String::new();
    for row in 0..frame.height() {
        line.clear();
        line.push('{');
        for (i, (name, column)) in names.iter().zip(columns).enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(name);
            line.push(':');
            let value = column.get(row).unwrap_or(AnyValue::Null);
            push_json(&mut line, &value);
        }
        line.push_str("}\n");
        out.write_all(line.as_bytes())?;
    }
    Ok(())
}

fn push_json(line: &mut String, value: &AnyValue<'_>) {
    use std::fmt::Write as _;
    let _ = match value {
        AnyValue::Null => write!(line, "null"),
        AnyValue::Boolean(b) => write!(line, "{b}"),
        AnyValue::UInt32(v) => write!(line, "{v}"),
        AnyValue::UInt64(v) => write!(line, "{v}"),
        AnyValue::Int32(v) => write!(line, "{v}"),
        AnyValue::Int64(v) => write!(line, "{v}"),
        AnyValue::Float64(v) if v.is_finite() => write!(line, "{v}"),
        AnyValue::Float64(_) => write!(line, "null"),
        AnyValue::String(s) => {
            write!(line, "{}", serde_json::to_string(s).unwrap_or_default())
        }
        AnyValue::StringOwned(s) => {
            write!(line, "{}", serde_json::to_string(s.as_str()).unwrap_or_default())
        }
        other => write!(line, "{}", serde_json::to_string(&other.to_string()).unwrap_or_default()),
    };
}

/// Keeps the small tables (anomalies, summary, traces) in memory, for printing.
#[derive(Debug, Default)]
pub struct Collector {
    chunks: Mutex<Vec<(TraceLabels, Chunk)>>,
}

impl Collector {
    /// An empty collector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything collected, in arrival order.
    pub fn into_chunks(self) -> Vec<(TraceLabels, Chunk)> {
        self.chunks.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TableSink for Collector {
    fn wants(&self, table: Table) -> bool {
        matches!(table, Table::Anomalies | Table::Summary | Table::Traces)
    }

    fn begin(&self, _labels: &TraceLabels) -> Result<(), SinkError> {
        Ok(())
    }

    fn write(&self, labels: &TraceLabels, _part: u32, chunk: Chunk) -> Result<(), SinkError> {
        if self.wants(chunk.table()) {
            self.chunks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((labels.clone(), chunk));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_hive_style() {
        assert_eq!(escape("host=a/t 1.dat"), "host%3Da%2Ft%201.dat");
        assert_eq!(escape("plain-name_1.txt"), "plain-name_1.txt");
    }
}
