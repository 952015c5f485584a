//! Rendering any event as the kernel's print fmt says, the way `trace-cmd report -N`
//! (libtraceevent without plugins) renders it.
//!
//! A format file's `print fmt:` line is a C `printf` format and its argument expressions over
//! the record (`REC->field`), with the kernel's helpers (`__print_symbolic`, `__print_flags`,
//! `__get_str`, `__print_hex`, `__print_array`, `__get_bitmask`, ...). [`PrintFmt::compile`]
//! parses it once per format with `nom` (the grammar is in `parse`) and resolves its field
//! references; [`PrintFmt::render`] evaluates it against one record's values, given as a
//! [`FieldSource`]: the decoded [`Fields`] of an [`vmxray_events::EventKind::Other`] event, or
//! a raw [`Record`].
//!
//! The output is libtraceevent's, quirks included, because the point is that a line reads the
//! same as in `trace-cmd report -N`: fields are unsigned and not sign-extended (`%ld` of a
//! negative `int` prints 4294967295), casts to signed types mask, `%c` prints `>c<`, `%p`
//! prints `(nil)` for 0. When libtraceevent cannot parse a print fmt (a helper only a plugin
//! defines, such as `jiffies_to_msecs`; a statement expression, as in `kvm_mmu_get_page`), it
//! prints `[FAILED TO PARSE]` and then every field as ` name=value`; so does
//! [`PrintFmt::render`], returning [`Outcome::FailedToParse`]. What trace-cmd renders from data
//! this evaluator does not have — function names of `%pS` (the trace's kallsyms), printk
//! strings behind a `%s` of a pointer field when the trace did not save them, the
//! `%pM`/`%pI`/`%pU`/`%ph` families — is
//! rendered as libtraceevent does without that data (the address in hex, or nothing) and
//! reported as [`Outcome::Partial`] with the [`Unsupported`] construct, so callers can count
//! it.
//!
//! ```
//! use vmxray_capture::bin::format::EventFormat;
//! use vmxray_capture::bin::Endian;
//! use vmxray_capture::printfmt::Outcome;
//! use vmxray_events::{Fields, FieldValue};
//!
//! let text = "name: kvm_cr\nID: 98\nformat:\n\
//!     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
//!     \tfield:unsigned int rw;\toffset:8;\tsize:4;\tsigned:0;\n\
//!     \tfield:unsigned int cr;\toffset:12;\tsize:4;\tsigned:0;\n\
//!     \tfield:unsigned long val;\toffset:16;\tsize:8;\tsigned:0;\n\n\
//!     print fmt: \"cr_%s %x = 0x%lx\", REC->rw ? \"write\" : \"read\", REC->cr, REC->val\n";
//! let format = EventFormat::parse("kvm", text.as_bytes(), 8).unwrap();
//! let mut fields = Fields::new();
//! fields.push("rw", FieldValue::U64(1));
//! fields.push("cr", FieldValue::U64(3));
//! fields.push("val", FieldValue::U64(0x1000));
//! let mut out = String::new();
//! let outcome =
//!     format.print().render(&format.fields, &fields, Endian::Little, 8, None, &mut out);
//! assert_eq!(out, "cr_write 3 = 0x1000");
//! assert_eq!(outcome, Outcome::Rendered);
//! ```

mod cfmt;
mod eval;
mod parse;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use eval::FieldSource;
pub use parse::{MAX_DEPTH, MAX_NODES, PrintFmtError};

use crate::bin::Endian;
use crate::bin::format::{EventFormat, EventFormats, FieldFormat, FieldLayout, Record};
use vmxray_events::{Event, FieldValue, Fields};

/// A construct rendered the way libtraceevent renders it without data trace-cmd has, or that
/// libtraceevent renders from its own memory: the text may differ from trace-cmd's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unsupported {
    /// `%pS`/`%ps`/`%pF`/`%pf`: trace-cmd names the function from the trace's kallsyms.
    Symbol,
    /// `%s` of a pointer-sized field: trace-cmd prints the printk string at that address when
    /// the trace saved it.
    PrintkString,
    /// `%pM`, `%pI4`, `%pI6`, `%pU`, `%ph` and the like.
    PointerFormat,
    /// A value that is an address in libtraceevent's memory (`__get_dynamic_array` used as a
    /// number or pointer, a hex dump of a computed address).
    Address,
    /// A division or remainder by zero (libtraceevent would crash).
    DivisionByZero,
    /// A read beyond the field the expression names.
    OutOfRecord,
    /// A field the record (or the decoded field list) does not have.
    MissingField,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Symbol => "function symbols (%pS)",
            Self::PrintkString => "printk strings",
            Self::PointerFormat => "%pM/%pI/%pU/%ph",
            Self::Address => "addresses",
            Self::DivisionByZero => "division by zero",
            Self::OutOfRecord => "reads beyond a field",
            Self::MissingField => "missing fields",
        })
    }
}

/// How a record rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// As trace-cmd renders it.
    Rendered,
    /// Rendered, but a construct needed data this evaluator does not have.
    Partial(Unsupported),
    /// The print fmt cannot be parsed (by libtraceevent either): `[FAILED TO PARSE]` and the
    /// raw fields, as trace-cmd prints them.
    FailedToParse,
}

/// A compiled print fmt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintFmt {
    program: Result<Program, PrintFmtError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Program {
    pieces: Vec<cfmt::Piece>,
    args: Vec<parse::Expr>,
}

impl PrintFmt {
    /// Parses `print_fmt` (the text after `print fmt:`) against the event's fields; `long_size`
    /// is the traced kernel's `sizeof(long)`. Never fails: a print fmt that cannot be parsed
    /// renders as `[FAILED TO PARSE]` (see [`PrintFmt::error`]).
    pub fn compile(print_fmt: &str, fields: &[FieldFormat], long_size: u32) -> Self {
        let grammar = parse::Grammar::new(fields, long_size, print_fmt);
        let program = grammar.print_fmt(print_fmt).and_then(|parsed| {
            let pieces = cfmt::pieces(&parsed.format, parsed.args.len())?;
            Ok(Program { pieces, args: parsed.args })
        });
        Self { program }
    }

    /// Why the print fmt renders as `[FAILED TO PARSE]`, if it does.
    pub fn error(&self) -> Option<&PrintFmtError> {
        self.program.as_ref().err()
    }

    /// Appends the rendering of one record to `out`. `fields` are the event's fields (those
    /// the print fmt was compiled against), `endian` and `long_size` the traced kernel's,
    /// `printk` the trace's printk strings when it saved them.
    pub fn render<S: FieldSource + ?Sized>(
        &self,
        fields: &[FieldFormat],
        src: &S,
        endian: Endian,
        long_size: u32,
        printk: Option<&PrintkStrings>,
        out: &mut String,
    ) -> Outcome {
        let printk = printk.filter(|p| !p.is_empty());
        let eval =
            eval::Eval { fields, src, endian, long_size, printk, unsupported: Cell::new(None) };
        match &self.program {
            Ok(p) => {
                eval.render(&p.pieces, &p.args, out);
                match eval.unsupported.get() {
                    Some(u) => Outcome::Partial(u),
                    None => Outcome::Rendered,
                }
            }
            Err(_) => {
                eval.raw_fields(out);
                Outcome::FailedToParse
            }
        }
    }
}

/// The trace's printk strings by address (`printk_formats`, saved in trace.dat and perf's
/// tracing data): libtraceevent prints the string for a `%s` of a pointer field whose value is
/// one of these addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrintkStrings(HashMap<u64, Box<str>>);

impl PrintkStrings {
    /// Parses `0xADDR : "string"` lines as libtraceevent does (`tep_parse_printk_formats`):
    /// the quotes and a trailing `\n` are dropped; the first of duplicate addresses is kept.
    pub fn parse(text: &[u8]) -> Self {
        let text = String::from_utf8_lossy(text);
        let mut map = HashMap::new();
        for line in text.split('\n') {
            let Some((addr, fmt)) = line.split_once(':') else { continue };
            let addr = u64::from_str_radix(
                addr.trim().trim_start_matches("0x").trim_start_matches("0X"),
                16,
            )
            .unwrap_or(0);
            let s = fmt.strip_prefix(' ').unwrap_or(fmt);
            let s = s.strip_prefix('"').unwrap_or(s);
            let s = s.strip_suffix('"').unwrap_or(s);
            let s = s.strip_suffix("\\n").unwrap_or(s);
            map.entry(addr).or_insert_with(|| s.into());
        }
        Self(map)
    }

    /// The string at `addr`.
    pub fn get(&self, addr: u64) -> Option<&str> {
        self.0.get(&addr).map(|s| &**s)
    }

    /// True when the trace saved none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Decoded fields (an untyped event's): values by name. Strings get their NUL back and
/// scalars their bytes in the trace's byte order, so that they read as the record stored them.
impl FieldSource for Fields {
    fn int(&self, field: &FieldFormat) -> Option<u64> {
        self.get(&field.name)?.as_u64()
    }

    fn bytes(&self, field: &FieldFormat, endian: Endian) -> Option<Cow<'_, [u8]>> {
        Some(match self.get(&field.name)? {
            FieldValue::Str(s) => {
                let mut b = Vec::with_capacity(s.len() + 1);
                b.extend_from_slice(s.as_bytes());
                b.push(0);
                Cow::Owned(b)
            }
            FieldValue::Bytes(b) => Cow::Borrowed(&b[..]),
            FieldValue::Array(a) => {
                let elem = match field.layout {
                    FieldLayout::Array { elem_size }
                    | FieldLayout::DataLoc { elem_size }
                    | FieldLayout::RelLoc { elem_size }
                    | FieldLayout::Flexible { elem_size } => elem_size,
                    FieldLayout::Scalar | FieldLayout::Opaque => 8,
                };
                let mut b = Vec::with_capacity(a.len() * elem as usize);
                for v in a.iter() {
                    b.extend_from_slice(&put_uint(*v, elem, endian));
                }
                Cow::Owned(b)
            }
            v @ (FieldValue::U64(_) | FieldValue::I64(_)) => {
                let size = if matches!(field.size, 1 | 2 | 4 | 8) { field.size } else { 8 };
                Cow::Owned(put_uint(v.as_u64()?, size, endian))
            }
        })
    }
}

fn put_uint(v: u64, size: u32, endian: Endian) -> Vec<u8> {
    let n = (size as usize).min(8);
    match endian {
        Endian::Little => v.to_le_bytes()[..n].to_vec(),
        Endian::Big => v.to_be_bytes()[8 - n..].to_vec(),
    }
}

/// A raw record: values read at the format's offsets.
impl FieldSource for Record<'_> {
    fn int(&self, field: &FieldFormat) -> Option<u64> {
        field.read_uint(self.payload, self.endian)
    }

    fn bytes(&self, field: &FieldFormat, _endian: Endian) -> Option<Cow<'_, [u8]>> {
        field.slice(self.payload, self.endian).map(Cow::Borrowed)
    }
}

/// Counts of what [`PrintCatalog::render`] did, for a summary.
#[derive(Debug, Default)]
pub struct PrintCounts {
    rendered: AtomicU64,
    partial: AtomicU64,
    failed: AtomicU64,
    no_format: AtomicU64,
}

/// A snapshot of [`PrintCounts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrintTotals {
    /// Rendered as trace-cmd renders them.
    pub rendered: u64,
    /// Rendered without data trace-cmd would have used (see [`Unsupported`]).
    pub partial: u64,
    /// `[FAILED TO PARSE]` with the raw fields, as trace-cmd prints them.
    pub failed_to_parse: u64,
    /// Untyped events whose format the trace did not carry (text inputs): not rendered.
    pub no_format: u64,
}

impl PrintCounts {
    fn note(&self, outcome: Option<Outcome>) {
        let counter = match outcome {
            Some(Outcome::Rendered) => &self.rendered,
            Some(Outcome::Partial(_)) => &self.partial,
            Some(Outcome::FailedToParse) => &self.failed,
            None => &self.no_format,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn totals(&self) -> PrintTotals {
        PrintTotals {
            rendered: self.rendered.load(Ordering::Relaxed),
            partial: self.partial.load(Ordering::Relaxed),
            failed_to_parse: self.failed.load(Ordering::Relaxed),
            no_format: self.no_format.load(Ordering::Relaxed),
        }
    }
}

/// The print fmts of one trace, found by an event's system and name, for rendering the events
/// no typed rendering covers (`vmxray dump`, the TUI). Shared between threads.
#[derive(Debug, Default)]
pub struct PrintCatalog {
    /// By the address of the format's name: events decoded from a binary trace share their
    /// format's name, so most look-ups are one hash of a word (the catalog holds every format,
    /// so no other live name can have the address).
    by_name_ptr: HashMap<usize, Arc<EventFormat>>,
    by_name: HashMap<Box<str>, Vec<Arc<EventFormat>>>,
    endian: Endian,
    long_size: u32,
    printk: Arc<PrintkStrings>,
    counts: PrintCounts,
}

impl PrintCatalog {
    /// The catalog of a trace's formats.
    pub fn new(formats: &EventFormats) -> Self {
        let mut by_name_ptr = HashMap::new();
        let mut by_name: HashMap<Box<str>, Vec<Arc<EventFormat>>> = HashMap::new();
        for f in formats.iter() {
            by_name_ptr.insert(name_key(&f.name), Arc::clone(f));
            by_name.entry(f.name.as_ref().into()).or_default().push(Arc::clone(f));
        }
        Self {
            by_name_ptr,
            by_name,
            endian: formats.endian(),
            long_size: formats.long_size(),
            printk: Arc::clone(formats.printk()),
            counts: PrintCounts::default(),
        }
    }

    /// The format of `system:name`.
    pub fn find(&self, system: &str, name: &Arc<str>) -> Option<&Arc<EventFormat>> {
        if let Some(f) = self.by_name_ptr.get(&name_key(name))
            && Arc::ptr_eq(&f.name, name)
            && &*f.system == system
        {
            return Some(f);
        }
        self.by_name.get(&**name)?.iter().find(|f| system.is_empty() || &*f.system == system)
    }

    /// Appends the print-fmt rendering of an event without a typed rendering (an untyped
    /// tracepoint, a probe or print event) to `out`; `None` (and nothing appended) for typed
    /// events and for events whose format the trace does not have. Counted in
    /// [`PrintCatalog::totals`] (typed events are not counted).
    pub fn render(&self, event: &Event, out: &mut String) -> Option<Outcome> {
        let source = event.kind.untyped_source()?;
        let outcome = self.find(&source.system, &source.name).map(|f| {
            f.print().render(
                &f.fields,
                &source.fields,
                self.endian,
                self.long_size,
                Some(&self.printk),
                out,
            )
        });
        self.counts.note(outcome);
        outcome
    }

    /// What [`PrintCatalog::render`] did so far.
    pub fn totals(&self) -> PrintTotals {
        self.counts.totals()
    }
}

fn name_key(name: &Arc<str>) -> usize {
    Arc::as_ptr(name).cast::<u8>() as usize
}

#[cfg(test)]
mod tests;
