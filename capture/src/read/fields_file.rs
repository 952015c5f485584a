//! Explicit VMCS field records read from a file (`--fields FILE`) and merged into a trace by
//! timestamp. The line format is [`vmxray_events::vmcs::record`]'s.

use vmxray_events::Event;
use vmxray_events::vmcs::record::{FieldRecord, LineError, parse_line};

/// A line that could not be read, with its 1-based number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Line {line}")]
pub struct ImportError {
    /// The 1-based line number.
    pub line: u64,
    /// What is wrong.
    #[source]
    pub kind: LineError,
}

/// A parsed records file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldsFile {
    /// The records, stably sorted by timestamp.
    pub records: Vec<FieldRecord>,
    /// Lines skipped (with `permissive`).
    pub skipped: u64,
    /// The first few skipped lines' errors.
    pub problems: Vec<ImportError>,
}

/// How many skipped-line errors [`FieldsFile::problems`] keeps.
pub const MAX_PROBLEMS: usize = 10;

/// Parses a whole file. Without `permissive` the first bad line is the error; with it, bad lines
/// are skipped and counted (the first [`MAX_PROBLEMS`] kept).
pub fn parse_fields(text: &str, permissive: bool) -> Result<FieldsFile, ImportError> {
    let mut out = FieldsFile::default();
    for (i, line) in text.lines().enumerate() {
        let line_no = i as u64 + 1;
        match parse_line(line) {
            Ok(Some(mut rec)) => {
                rec.line = line_no;
                out.records.push(rec);
            }
            Ok(None) => {}
            Err(kind) => {
                let err = ImportError { line: line_no, kind };
                if !permissive {
                    return Err(err);
                }
                out.skipped += 1;
                if out.problems.len() < MAX_PROBLEMS {
                    out.problems.push(err);
                }
            }
        }
    }
    out.records.sort_by_key(|r| r.ts);
    Ok(out)
}

/// Merges explicit records (sorted by timestamp) into a time-ordered event stream: each record
/// becomes a `vmxray:vmcs_field` event placed after every event with `ts <= record.ts`.
///
/// ```text
///  events:   e(10)  e(20)        e(30)
///  records:            r(20) r(25)
///  merged:   e(10)  e(20)  r(20) r(25) e(30)
/// ```
pub fn merge<I, E>(events: I, records: Vec<FieldRecord>) -> Merge<I::IntoIter>
where
    I: IntoIterator<Item = Result<Event, E>>,
{
    Merge { events: events.into_iter(), pending: None, records: records.into_iter().peekable() }
}

/// The iterator of [`merge`].
pub struct Merge<I: Iterator> {
    events: I,
    pending: Option<I::Item>,
    records: std::iter::Peekable<std::vec::IntoIter<FieldRecord>>,
}

impl<I, E> Iterator for Merge<I>
where
    I: Iterator<Item = Result<Event, E>>,
{
    type Item = Result<Event, E>;

    fn next(&mut self) -> Option<Self::Item> {
        // No record left to merge: the events pass straight through (`vmxray replay` without
        // `--fields` goes this way for every event).
        if self.records.len() == 0 && self.pending.is_none() {
            return self.events.next();
        }
        if self.pending.is_none() {
            self.pending = self.events.next();
        }
        match &self.pending {
            Some(Ok(event)) => {
                if self.records.peek().is_some_and(|r| r.ts < event.ts) {
                    return self.records.next().map(|r| Ok(r.to_event()));
                }
                self.pending.take()
            }
            // An error is passed on at once (the reader decides whether more follows).
            Some(Err(_)) => self.pending.take(),
            None => self.records.next().map(|r| Ok(r.to_event())),
        }
    }
}

#[cfg(test)]
mod tests {
    use vmxray_events::EventKind;
    use vmxray_events::vmcs::record::of_event;
    use vmxray_events::vmcs::{Access, FieldEncoding, VmcsRef};

    use super::*;

    #[test]
    fn files_report_line_numbers_or_count_with_permissive() {
        let text = "# header\n20 0 0 vmcs01 read GUEST_RIP 0x1000\nbad line\n10 0 0 vmcs02 write GUEST_CR3 0x2000\n";
        let err = parse_fields(text, false).unwrap_err();
        assert_eq!(err.line, 3);
        assert_eq!(err.to_string(), "Line 3");
        assert!(err.kind.to_string().starts_with("Expected 7 columns"), "{err}");
        let f = parse_fields(text, true).unwrap();
        assert_eq!(f.skipped, 1);
        assert_eq!(f.problems[0].line, 3);
        assert_eq!(
            f.records.iter().map(|r| (r.ts, r.line)).collect::<Vec<_>>(),
            [(10, 4), (20, 2)]
        );
    }

    #[test]
    fn merge_places_records_after_events_of_the_same_time() {
        let ev = |ts| {
            Ok::<_, ()>(Event {
                ts,
                cpu: 0,
                pid: 1,
                tgid: None,
                comm: None,
                kind: EventKind::Lost { count: None },
            })
        };
        let rec = |ts| FieldRecord {
            ts,
            cpu: 0,
            vcpu: 0,
            vmcs: VmcsRef::Vmcs01,
            access: Access::Read,
            field: FieldEncoding::GUEST_RIP,
            value: 0,
            line: 0,
        };
        let merged: Vec<(u64, bool)> =
            merge(vec![ev(10), ev(20), ev(30)], vec![rec(20), rec(25), rec(40)])
                .map(|e| {
                    let e = e.unwrap();
                    (e.ts, of_event(&e).is_some())
                })
                .collect();
        assert_eq!(
            merged,
            [(10, false), (20, false), (20, true), (25, true), (30, false), (40, true)]
        );
    }
}
