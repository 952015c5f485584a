//! Explicit VMCS field records: a small text format for what a user's own instrumentation saw.
//!
//! # Format
//!
//! One record per line, whitespace-separated columns:
//!
//! ```text
//! <ts_ns> <cpu> <vcpu> <vmcs> <read|write> <field> <value>
//!
//! 1198880325000 1 0 vmcs12@0x7000 write GUEST_CR3 0x10ff9000
//! 1198880325100 1 0 vmcs02        read  0x6802    0x189f000
//! ```
//!
//! - `ts_ns`: decimal timestamp in the trace clock's units (ns for the `mono`/`local`/`global`
//!   clocks), the same clock as the trace it is merged with;
//! - `cpu`, `vcpu`: decimal;
//! - `vmcs`: `vmcs01`, `vmcs02`, `vmcs12@<gpa>` (hex `0x…` or decimal) or `vmcs12@evmcs`;
//! - `field`: an SDM encoding (`0x6802`, decimal also accepted) or its name
//!   ([`FieldEncoding::from_name`]: case-insensitive, `NAME_HIGH` for a 64-bit field's high half);
//!   an encoding the table does not name is accepted and prints `UNKNOWN(0x..)`;
//! - `value`: hex `0x…` or decimal, at most the field's width.
//!
//! Empty lines and lines starting with `#` are ignored. Anything after the seventh column is an
//! error (so that a truncated or merged line is never half-read).
//!
//! **Ordering.** A file need not be sorted: records are stably sorted by timestamp. Merged with
//! a trace, a record with timestamp *T* goes after every event with `ts <= T` and
//! before the first event with `ts > T` (`vmxray_capture::read::fields_file::merge`).
//!
//! **Inside a trace.** A `trace_printk`/`ftrace:print` line (`print`/`bprint` events, or any
//! untyped event with a string `buf`, `fmt`, `msg` or `text` field) whose text is a record in
//! this format — optionally after a `func: ` prefix — is picked up too
//! ([`from_print`]: every reader types it as [`EventKind::VmcsField`]); other print lines are left alone. Its position in the trace is the
//! event's; the line's own timestamp is kept in the record.

use serde::Serialize;

use super::{Access, FieldEncoding, VmcsRef, parse_u64};
use crate::event::{Event, EventKind, OtherEvent, VmcsFieldEvent};
use crate::fields::{FieldValue, Fields};

/// One explicit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldRecord {
    /// Timestamp (trace clock).
    pub ts: u64,
    /// CPU.
    pub cpu: u32,
    /// vCPU.
    pub vcpu: u32,
    /// Which VMCS.
    pub vmcs: VmcsRef,
    /// Read or write.
    pub access: Access,
    /// Which field.
    pub field: FieldEncoding,
    /// The value.
    pub value: u64,
    /// The 1-based line it came from (0 when built in code or taken from a trace event).
    pub line: u64,
}

/// What is wrong with a line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// Fewer than seven columns.
    #[error(
        "Expected 7 columns `<ts_ns> <cpu> <vcpu> <vmcs> <read|write> <field> <value>`, found {0}"
    )]
    Columns(usize),
    /// More than seven columns.
    #[error("Unexpected text after the value: `{0}`")]
    Trailing(String),
    /// A column that should be a decimal number is not.
    #[error("Column {column} is not a decimal number: `{text}`")]
    Number {
        /// The column's name.
        column: &'static str,
        /// Its text.
        text: String,
    },
    /// The VMCS column.
    #[error("Unknown VMCS `{0}` (expected vmcs01, vmcs02, vmcs12@<gpa> or vmcs12@evmcs)")]
    Vmcs(String),
    /// The access column.
    #[error("Expected `read` or `write`, found `{0}`")]
    Access(String),
    /// The field column.
    #[error("Unknown field `{0}` (a name from the SDM table or an encoding such as 0x6802)")]
    Field(String),
    /// The encoding sets reserved bits.
    #[error("Field encoding {0:#x} sets bits the SDM reserves")]
    Encoding(u32),
    /// The value column.
    #[error("Value `{0}` is not a number (0x… or decimal)")]
    Value(String),
    /// The value does not fit the field.
    #[error("Value {value:#x} does not fit the {bits}-bit field {field}")]
    TooWide {
        /// The value.
        value: u64,
        /// The field's width in bits.
        bits: u32,
        /// The field.
        field: FieldEncoding,
    },
}

/// Parses one line: `Ok(None)` for blank lines and comments.
pub fn parse_line(line: &str) -> Result<Option<FieldRecord>, LineError> {
    let text = line.trim();
    if text.is_empty() || text.starts_with('#') {
        return Ok(None);
    }
    let cols: Vec<&str> = text.split_whitespace().take(8).collect();
    if cols.len() < 7 {
        return Err(LineError::Columns(cols.len()));
    }
    if cols.len() > 7 {
        let rest = text.split_whitespace().skip(7).collect::<Vec<_>>().join(" ");
        return Err(LineError::Trailing(rest.chars().take(40).collect()));
    }
    let number = |column: &'static str, s: &str| {
        let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| s.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| LineError::Number { column, text: clip(s) })
    };
    let small = |column: &'static str, s: &str| {
        number(column, s)
            .and_then(|v| u32::try_from(v).map_err(|_| LineError::Number { column, text: clip(s) }))
    };
    let ts = number("ts_ns", cols[0])?;
    let cpu = small("cpu", cols[1])?;
    let vcpu = small("vcpu", cols[2])?;
    let vmcs: VmcsRef = cols[3].parse().map_err(|_| LineError::Vmcs(clip(cols[3])))?;
    let access = match cols[4].to_ascii_lowercase().as_str() {
        "read" => Access::Read,
        "write" => Access::Write,
        _ => return Err(LineError::Access(clip(cols[4]))),
    };
    let field = FieldEncoding::parse(cols[5]).ok_or_else(|| LineError::Field(clip(cols[5])))?;
    if !field.is_well_formed() {
        return Err(LineError::Encoding(field.0));
    }
    let value = parse_u64(cols[6]).ok_or_else(|| LineError::Value(clip(cols[6])))?;
    let bits = field.value_bits();
    if bits < 64 && value >> bits != 0 {
        return Err(LineError::TooWide { value, bits, field });
    }
    Ok(Some(FieldRecord { ts, cpu, vcpu, vmcs, access, field, value, line: 0 }))
}

fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

impl FieldRecord {
    /// The fields of the synthetic `vmxray:vmcs_field` event a record becomes when it is
    /// merged into a trace (how `dump` and `convert` show it).
    pub fn to_fields(&self) -> Fields {
        let mut fields = Fields::new();
        fields.push("vcpu_id", FieldValue::U64(u64::from(self.vcpu)));
        fields.push("vmcs", FieldValue::Str(self.vmcs.to_string().into()));
        fields.push("access", FieldValue::Str(self.access.to_string().into()));
        fields.push("field", FieldValue::U64(u64::from(self.field.0)));
        fields.push("value", FieldValue::U64(self.value));
        fields.push("line", FieldValue::U64(self.line));
        fields
    }

    /// The event this record becomes in a merged stream, so that every consumer (dump, replay,
    /// the TUI) sees it at its place with an event index.
    pub fn to_event(&self) -> Event {
        Event {
            ts: self.ts,
            cpu: self.cpu,
            // Not a thread: the record names its vCPU itself.
            pid: -1,
            tgid: None,
            comm: None,
            kind: EventKind::VmcsField(Box::new(VmcsFieldEvent {
                record: self.clone(),
                source: None,
            })),
        }
    }

    /// The record the fields of a `vmxray:vmcs_field` event describe (the inverse of
    /// [`Self::to_fields`]). Its `ts` and `cpu` are 0: such an event's place is its own.
    pub fn from_fields(f: &Fields) -> Option<Self> {
        let get = |n: &str| f.get(n).and_then(FieldValue::as_u64);
        let vmcs = f.get("vmcs")?.as_str()?.parse().ok()?;
        let access = match f.get("access")?.as_str()? {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => return None,
        };
        Some(Self {
            ts: 0,
            cpu: 0,
            vcpu: u32::try_from(get("vcpu_id")?).ok()?,
            vmcs,
            access,
            field: FieldEncoding(u32::try_from(get("field")?).ok()?),
            value: get("value")?,
            line: get("line").unwrap_or(0),
        })
    }
}

/// The record a `trace_printk`/`ftrace:print` event carries, if its text is one (see the module
/// documentation).
pub fn from_print(o: &OtherEvent) -> Option<FieldRecord> {
    let text = o.print_text()?;
    parse_line(text).ok().flatten().or_else(|| {
        let (_, rest) = text.split_once(": ")?;
        parse_line(rest).ok().flatten()
    })
}

/// The record an event carries: an explicit record (merged, or recognized in a print line).
pub fn of_event(event: &Event) -> Option<&FieldRecord> {
    match &event.kind {
        EventKind::VmcsField(v) => Some(&v.record),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_of_each_shape() {
        let r = parse_line("  10 1 2 vmcs12@0x7000 write GUEST_CR3 0x10ff9000 ").unwrap().unwrap();
        assert_eq!((r.ts, r.cpu, r.vcpu), (10, 1, 2));
        assert_eq!(r.vmcs, VmcsRef::Vmcs12 { gpa: 0x7000 });
        assert_eq!(
            (r.access, r.field, r.value),
            (Access::Write, FieldEncoding::GUEST_CR3, 0x10ff9000)
        );
        let r = parse_line("5 0 0 vmcs02 READ 0x4402 48").unwrap().unwrap();
        assert_eq!(
            (r.vmcs, r.field, r.value),
            (VmcsRef::Vmcs02, FieldEncoding::VM_EXIT_REASON, 48)
        );
        let r = parse_line("5 0 0 vmcs12@evmcs read 0x6830 1").unwrap().unwrap();
        assert_eq!((r.vmcs, r.field.to_string()), (VmcsRef::Evmcs, "UNKNOWN(0x6830)".into()));
        assert_eq!(parse_line("# comment").unwrap(), None);
        assert_eq!(parse_line("").unwrap(), None);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (line, want) in [
            ("1 2 3", LineError::Columns(3)),
            (
                "x 0 0 vmcs01 read GUEST_CR3 1",
                LineError::Number { column: "ts_ns", text: "x".into() },
            ),
            ("1 0 0 vmcs03 read GUEST_CR3 1", LineError::Vmcs("vmcs03".into())),
            ("1 0 0 vmcs01 poke GUEST_CR3 1", LineError::Access("poke".into())),
            ("1 0 0 vmcs01 read GUEST_CR9 1", LineError::Field("GUEST_CR9".into())),
            ("1 0 0 vmcs01 read 0x16802 1", LineError::Encoding(0x16802)),
            ("1 0 0 vmcs01 read GUEST_CR3 zz", LineError::Value("zz".into())),
            ("1 0 0 vmcs01 read GUEST_CR3 1 extra", LineError::Trailing("extra".into())),
            (
                "1 0 0 vmcs01 read VM_EXIT_REASON 0x100000000",
                LineError::TooWide {
                    value: 1 << 32,
                    bits: 32,
                    field: FieldEncoding::VM_EXIT_REASON,
                },
            ),
        ] {
            assert_eq!(parse_line(line), Err(want), "{line}");
        }
    }

    #[test]
    fn record_events_round_trip_and_print_lines_are_picked_up() {
        let rec = parse_line("7 1 0 vmcs12@0x7000 write GUEST_CR3 0x5000").unwrap().unwrap();
        assert_eq!(of_event(&rec.to_event()), Some(&rec));
        let merged = EventKind::untyped(
            crate::vmcs::RECORD_SYSTEM.into(),
            crate::vmcs::RECORD_EVENT.into(),
            rec.to_fields(),
        );
        let EventKind::VmcsField(back) = merged else { panic!("{merged:?}") };
        assert_eq!(back.record, FieldRecord { ts: 0, cpu: 0, ..rec.clone() });
        let mut fields = Fields::new();
        fields.push("ip", FieldValue::U64(0xffff));
        fields.push(
            "buf",
            FieldValue::Str(
                "nested_vmx_vmexit: 7 1 0 vmcs12@0x7000 write GUEST_CR3 0x5000\n".into(),
            ),
        );
        let print = EventKind::untyped("ftrace".into(), "print".into(), fields);
        let EventKind::VmcsField(typed) = &print else { panic!("{print:?}") };
        assert_eq!(typed.record, rec);
        assert_eq!((print.system(), print.name()), ("ftrace", "print"));
        let mut other = Fields::new();
        other.push("buf", FieldValue::Str("hello world".into()));
        // Not a record: a print all the same.
        let not_a_record = EventKind::untyped("ftrace".into(), "print".into(), other);
        let EventKind::Printk(p) = &not_a_record else { panic!("{not_a_record:?}") };
        assert_eq!((p.func.as_deref(), &*p.text), (None, "hello world"));
        assert_eq!((not_a_record.system(), not_a_record.name()), ("ftrace", "print"));
    }
}
