//! Rendering events: back to the kernel's field names, and the normalized one-line text and
//! JSON Lines wire formats of `vmxray dump`.
//!
//! ## The normalized line (stable)
//!
//! ```text
//! <ts> [<cpu>] <pid> "<comm>" <system>:<event> [vcpu=<n>] <field>=<value>... [| <decoded>]
//! 665.844340123 [001] 17796 "qemu vcpu-0 x" kvm:kvm_exit vcpu=0 exit_reason=0x1c guest_rip=0xfff0 ... | reason=CR_ACCESS qual="mov cr3, rax"
//! ```
//! - `ts` is `seconds.nanoseconds` for nanosecond clocks, the raw integer otherwise;
//! - `cpu` is three digits or more; `comm` is always quoted (it may contain spaces), `"?"` when
//!   unknown;
//! - the fields are the kernel's field names in the kernel's order, integers in hex when the
//!   kernel prints them in hex (addresses, codes, masks), decimal otherwise; strings quoted; byte
//!   arrays as `[0f 22 d8]`; a field the traced kernel's layout lacks is absent, never `0`;
//! - one field is not the kernel's: kvmmmu page events read from a text rendering that omits
//!   role bits carry `vmxray_role_known=0x…` after the kernel's fields (the mask of role bits
//!   the input determined, [`vmxray_events::MmuPage::role_known`]); it is absent when the raw role word
//!   was read;
//! - after ` | `, human decodings (reason names, interruption info, CR-access qualification,
//!   MMU role) that are derived from the fields, never new information;
//! - events without a typed rendering (untyped tracepoints such as `sched_switch` or
//!   `irq_handler_entry`, probe and print events) carry, when the trace stored their format,
//!   the decoding `text="..."`: the event rendered through its format's `print fmt:` exactly
//!   as `trace-cmd report -N` prints it ([`crate::printfmt`]; `[FAILED TO PARSE] name=value...`
//!   where libtraceevent cannot parse the print fmt either). It is always quoted, with Rust's
//!   string escaping (`\n`, `\"`, `\u{..}`), and it is the last decoding:
//!
//! ```text
//! 12.000000100 [001] 42 "CPU 0/KVM" sched:sched_switch prev_comm="CPU 0/KVM" prev_pid=42 ... | text="prev_comm=CPU 0/KVM prev_pid=42 prev_prio=120 prev_state=S ==> next_comm=swapper/1 next_pid=0 next_prio=120"
//! ```
//!
//! ## JSON Lines (stable)
//!
//! One object per event: `ts_ns` (integer nanoseconds, `null` when the clock is not in ns),
//! `ts` (raw timestamp), `clock`, `cpu`, `pid`, `comm` (`null` when unknown), `system`, `event`
//! (bare name), `vcpu` (present when known), `fields` (every field by kernel name: integers as
//! JSON numbers, strings, byte arrays as arrays of numbers), `decoded` (the same decodings as
//! the text line, as strings) and, for events without a typed rendering whose format the trace
//! stored, `text` (the print-fmt rendering, as in the text line).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::Arc;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use vmxray_events::kernel_fields::{Field, Radix, Val, typed_fields};
use vmxray_events::{Event, FieldValue};

use crate::ordered::Ordered;
use crate::printfmt::PrintCatalog;
use crate::read::Clock;

/// The normalized one-line rendering of an event (see the module docs).
pub struct Line<'a> {
    /// The event.
    pub event: &'a Event,
    /// The trace clock (decides how `ts` prints).
    pub clock: &'a Clock,
    /// The vCPU, when known beyond the event's own `vcpu_id` (thread attribution).
    pub vcpu: Option<u32>,
    /// The trace's print fmts, for the `text` decoding of untyped events.
    pub print: Option<&'a PrintCatalog>,
}

/// Formats a timestamp in the clock's units: `sec.nanoseconds` for ns clocks.
pub fn format_ts(ts: u64, clock: &Clock) -> String {
    if clock.is_ns() {
        format!("{}.{:09}", ts / 1_000_000_000, ts % 1_000_000_000)
    } else {
        ts.to_string()
    }
}

impl Line<'_> {
    /// Appends the line (without a newline) to `out`: the same text as `Display`, written
    /// straight into bytes (integers through `itoa` and a hex writer, no `fmt` machinery and no
    /// allocation for the common fields), because `vmxray dump` prints millions of these.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let e = self.event;
        if self.clock.is_ns() {
            put_u64(out, e.ts / 1_000_000_000);
            out.push(b'.');
            put_padded(out, e.ts % 1_000_000_000, 9);
        } else {
            put_u64(out, e.ts);
        }
        out.extend_from_slice(b" [");
        put_padded(out, u64::from(e.cpu), 3);
        out.extend_from_slice(b"] ");
        put_i64(out, i64::from(e.pid));
        out.push(b' ');
        match &e.comm {
            Some(c) => put_quoted(out, c),
            None => out.extend_from_slice(b"\"?\""),
        }
        out.push(b' ');
        out.extend_from_slice(e.system().as_bytes());
        out.push(b':');
        out.extend_from_slice(e.name().as_bytes());
        let own_vcpu = e.kind.vcpu_id();
        if let Some(v) = self.vcpu.or(own_vcpu) {
            out.extend_from_slice(b" vcpu=");
            put_u64(out, u64::from(v));
        }
        match e.kind.untyped_fields() {
            Some(fields) => {
                for (name, value) in fields.iter() {
                    out.push(b' ');
                    out.extend_from_slice(name.as_bytes());
                    out.push(b'=');
                    put_value(out, value);
                }
            }
            None => typed_fields(&e.kind, |field: Field<'_>| {
                if field.name == "vcpu_id" && own_vcpu.is_some() {
                    return;
                }
                out.push(b' ');
                out.extend_from_slice(field.name.as_bytes());
                out.push(b'=');
                match (field.value, field.radix) {
                    (Val::U64(v), Radix::Hex) => put_hex(out, v),
                    (Val::U64(v), Radix::Dec) => put_u64(out, v),
                    (Val::I64(v), _) => put_i64(out, v),
                    (Val::Str(s), _) => put_quoted(out, s),
                    (Val::Bytes(b), _) => put_bytes(out, b),
                }
            }),
        }
        let mut first = true;
        e.kind.for_each_decoded(|name, value| {
            if first {
                out.extend_from_slice(b" |");
                first = false;
            }
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            let start = out.len();
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{value}");
            if out[start..].contains(&b' ') {
                // A value with spaces is quoted (Rust string escaping, like `{:?}`).
                let text = String::from_utf8_lossy(&out[start..]).into_owned();
                out.truncate(start);
                put_quoted(out, &text);
            }
        });
        if let Some(catalog) = self.print {
            PRINT_TEXT.with(|cell| {
                // This thread's buffer, unless it is in use further up the stack.
                let mut fresh = String::new();
                let mut held = cell.try_borrow_mut();
                let text = match &mut held {
                    Ok(t) => &mut **t,
                    Err(_) => &mut fresh,
                };
                text.clear();
                if catalog.render(e, text).is_some() {
                    out.extend_from_slice(if first { b" | text=" } else { b" text=" });
                    put_quoted(out, text);
                }
            });
        }
    }
}

thread_local! {
    /// The print-fmt text of the event being written (dump renders millions of lines).
    static PRINT_TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::with_capacity(128);
        self.write_to(&mut buf);
        // Only `str` pieces are written, so the bytes are UTF-8.
        f.write_str(&String::from_utf8_lossy(&buf))
    }
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn put_i64(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `v` in decimal, zero-padded to at least `width` digits (`{:0width$}`).
fn put_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(v).as_bytes();
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits.len())));
    out.extend_from_slice(digits);
}

/// `v` as `{:#x}`: `0x` and lowercase digits without leading zeros.
fn put_hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut at = buf.len();
    let mut rest = v;
    loop {
        at -= 1;
        buf[at] = DIGITS[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(b"0x");
    out.extend_from_slice(&buf[at..]);
}

/// Bytes as `[0f 22 d8]`.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push(b'[');
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0xf)]);
    }
    out.push(b']');
}

/// A string quoted as `{:?}` does: printable ASCII other than `"` and `\` is copied as is,
/// anything else goes through Rust's escaping.
fn put_quoted(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{s:?}");
    }
}

/// A kept field's value as [`FieldValue`]'s `Display` prints it.
fn put_value(out: &mut Vec<u8>, value: &FieldValue) {
    match value {
        FieldValue::U64(v) => put_u64(out, *v),
        FieldValue::I64(v) => put_i64(out, *v),
        FieldValue::Str(s) => put_quoted(out, s),
        FieldValue::Bytes(b) => put_bytes(out, b),
        FieldValue::Array(_) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{value}");
        }
    }
}

/// The JSON Lines rendering of an event (see the module docs).
pub struct JsonEvent<'a> {
    /// The event.
    pub event: &'a Event,
    /// The trace clock.
    pub clock: &'a Clock,
    /// The vCPU, when known beyond the event's own `vcpu_id`.
    pub vcpu: Option<u32>,
    /// The trace's print fmts, for the `text` of untyped events.
    pub print: Option<&'a PrintCatalog>,
}

impl Serialize for JsonEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.event;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("ts_ns", &self.clock.is_ns().then_some(e.ts))?;
        map.serialize_entry("ts", &e.ts)?;
        map.serialize_entry("clock", self.clock.name())?;
        map.serialize_entry("cpu", &e.cpu)?;
        map.serialize_entry("pid", &e.pid)?;
        map.serialize_entry("comm", &e.comm.as_deref())?;
        map.serialize_entry("system", e.system())?;
        map.serialize_entry("event", e.name())?;
        if let Some(v) = self.vcpu.or(e.kind.vcpu_id()) {
            map.serialize_entry("vcpu", &v)?;
        }
        map.serialize_entry("fields", &e.kind.kernel_fields())?;
        let mut decoded = String::new();
        let pairs = e.kind.decoded();
        let obj: serde_json::Map<String, serde_json::Value> = pairs
            .into_iter()
            .map(|(k, v)| {
                decoded.clear();
                let _ = write!(decoded, "{v}");
                (k.to_owned(), serde_json::Value::String(decoded.clone()))
            })
            .collect();
        map.serialize_entry("decoded", &obj)?;
        if let Some(catalog) = self.print {
            let mut text = String::new();
            if catalog.render(e, &mut text).is_some() {
                map.serialize_entry("text", &text)?;
            }
        }
        map.end()
    }
}

/// The wire formats of `vmxray dump`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The normalized line ([`Line`]).
    Text,
    /// JSON Lines ([`JsonEvent`]).
    Jsonl,
}

impl Format {
    /// Appends one event and its newline to `out`; `print` gives untyped events their `text`.
    pub fn render(
        self,
        event: &Event,
        clock: &Clock,
        vcpu: Option<u32>,
        print: Option<&PrintCatalog>,
        out: &mut Vec<u8>,
    ) {
        match self {
            Format::Text => Line { event, clock, vcpu, print }.write_to(out),
            Format::Jsonl => {
                let json = JsonEvent { event, clock, vcpu, print };
                if serde_json::to_writer(&mut *out, &json).is_err() {
                    // Serializing these types cannot fail; keep the line count right anyway.
                    out.extend_from_slice(b"{}");
                }
            }
        }
        out.push(b'\n');
    }
}

/// Events per rendering job: large enough that handing a batch to another thread costs little
/// next to rendering it (~4096 lines, a few hundred KiB of text), small enough to keep memory
/// flat.
const RENDER_BATCH: usize = 4096;
/// Rendering jobs in flight before the writer waits for the oldest.
const RENDER_AHEAD: usize = 4;

/// Events with their thread-attributed vCPU, to render.
type Batch = Vec<(Event, Option<u32>)>;
/// A rendered batch's text and the emptied batch (its buffer to reuse).
type Rendered = (Vec<u8>, Batch);

/// Renders events in order to a writer, rendering batches of them on the rayon pool while the
/// caller reads on (with `parallel`; else on the calling thread). The bytes written are exactly
/// [`Format::render`]'s for each event in push order.
///
/// ```
/// use vmxray_capture::render::{Format, OrderedWriter};
/// use vmxray_capture::Clock;
/// use vmxray_events::{Event, EventKind};
///
/// let mut w = OrderedWriter::new(Vec::new(), Clock::Local, Format::Text, true);
/// for ts in 0..3 {
///     let kind = EventKind::KvmNestedIntrVmexit { rip: 0xfff0 };
///     w.push(Event { ts, cpu: 0, pid: 1, tgid: None, comm: None, kind }, Some(0)).unwrap();
/// }
/// let text = String::from_utf8(w.finish().unwrap()).unwrap();
/// assert_eq!(text.lines().count(), 3);
/// assert!(text.starts_with("0.000000000 [000] 1 \"?\" kvm:kvm_nested_intr_vmexit vcpu=0 rip=0xfff0\n"));
/// ```
pub struct OrderedWriter<W: std::io::Write> {
    out: W,
    clock: Clock,
    format: Format,
    batch: Batch,
    /// Rendered text and the emptied batch, in push order.
    queue: Ordered<Rendered>,
    /// Buffers of finished jobs, reused: fresh multi-100-KiB buffers would be page-faulted
    /// in anew for every batch.
    spare_text: Vec<Vec<u8>>,
    spare_batches: Vec<Batch>,
    print: Option<Arc<PrintCatalog>>,
}

impl<W: std::io::Write> OrderedWriter<W> {
    /// A writer of `format` lines to `out`.
    pub fn new(out: W, clock: Clock, format: Format, parallel: bool) -> Self {
        Self {
            out,
            clock,
            format,
            batch: Vec::new(),
            queue: Ordered::new(parallel),
            spare_text: Vec::new(),
            spare_batches: Vec::new(),
            print: None,
        }
    }

    /// Renders untyped events' `text` with the trace's print fmts.
    pub fn with_print(mut self, catalog: Arc<PrintCatalog>) -> Self {
        self.print = Some(catalog);
        self
    }

    /// Queues one event (with its thread-attributed vCPU) for output.
    pub fn push(&mut self, event: Event, vcpu: Option<u32>) -> std::io::Result<()> {
        if self.batch.capacity() == 0 {
            self.batch =
                self.spare_batches.pop().unwrap_or_else(|| Vec::with_capacity(RENDER_BATCH));
        }
        self.batch.push((event, vcpu));
        if self.batch.len() >= RENDER_BATCH {
            self.send_batch();
            while self.queue.len() > RENDER_AHEAD {
                self.write_oldest()?;
            }
        }
        Ok(())
    }

    fn send_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        let mut text = self.spare_text.pop().unwrap_or_default();
        let (clock, format, print) = (self.clock.clone(), self.format, self.print.clone());
        self.queue.push(Box::new(move || {
            text.reserve(batch.len() * 128);
            for (event, vcpu) in &batch {
                format.render(event, &clock, *vcpu, print.as_deref(), &mut text);
            }
            // The events are dropped here, on the pool, not on the reading thread.
            batch.clear();
            (text, batch)
        }));
    }

    fn write_oldest(&mut self) -> std::io::Result<()> {
        let Some((mut text, batch)) = self.queue.pop() else { return Ok(()) };
        self.out.write_all(&text)?;
        text.clear();
        self.spare_text.push(text);
        self.spare_batches.push(batch);
        Ok(())
    }

    /// Writes everything still queued, flushes, and gives the writer back.
    pub fn finish(mut self) -> std::io::Result<W> {
        if !self.batch.is_empty() {
            self.send_batch();
        }
        while self.queue.len() > 0 {
            self.write_oldest()?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use vmxray_events::codes::{
        ExitCode, ExitReason, IntrInfo, Isa, MmuPageRole, UserspaceExitReason,
    };
    use vmxray_events::event::{Entry, ExitFields, InsnBytes, KnownEvent};
    use vmxray_events::{EventKind, ExitInfo, Fields, MmuPage};

    fn ev(kind: EventKind) -> Event {
        Event {
            ts: 665_844_340_123,
            cpu: 1,
            pid: 17796,
            tgid: None,
            comm: Some(vmxray_events::Comm::from("qemu vcpu-0 x")),
            kind,
        }
    }

    #[test]
    fn normalized_line_for_a_cr_exit() {
        let e = ev(EventKind::KvmExit(ExitInfo::from(ExitFields {
            reason: ExitCode::Vmx(ExitReason(28)),
            isa: Some(Isa::Vmx),
            guest_rip: Some(0xfff0),
            info1: Some(0x3),
            info2: Some(0),
            intr_info: Some(IntrInfo(0)),
            error_code: Some(0),
            vcpu_id: Some(0),
            requests: None,
        })));
        let line = Line { event: &e, clock: &Clock::Local, vcpu: None, print: None }.to_string();
        assert_eq!(
            line,
            "665.844340123 [001] 17796 \"qemu vcpu-0 x\" kvm:kvm_exit vcpu=0 exit_reason=0x1c \
             guest_rip=0xfff0 isa=1 info1=0x3 info2=0x0 intr_info=0x0 error_code=0x0 | \
             reason=CR_ACCESS qual=\"mov cr3, rax\""
        );
    }

    #[test]
    fn json_line_has_the_documented_keys() {
        let e = ev(EventKind::KvmUserspaceExit {
            reason: UserspaceExitReason::SHUTDOWN,
            errno: Some(0),
        });
        let v: serde_json::Value = serde_json::to_value(JsonEvent {
            event: &e,
            clock: &Clock::Local,
            vcpu: Some(0),
            print: None,
        })
        .unwrap();
        assert_eq!(v["ts_ns"], 665_844_340_123u64);
        assert_eq!(v["event"], "kvm_userspace_exit");
        assert_eq!(v["system"], "kvm");
        assert_eq!(v["comm"], "qemu vcpu-0 x");
        assert_eq!(v["vcpu"], 0);
        assert_eq!(v["fields"]["reason"], 8);
        assert_eq!(v["decoded"]["reason"], "KVM_EXIT_SHUTDOWN");
        let raw = serde_json::to_value(JsonEvent {
            event: &e,
            clock: &Clock::X86Tsc,
            vcpu: None,
            print: None,
        })
        .unwrap();
        assert!(raw["ts_ns"].is_null());
    }

    fn arb_kind() -> impl Strategy<Value = EventKind> {
        let exit = (any::<u32>(), any::<u64>(), proptest::option::of(any::<u32>()), any::<bool>())
            .prop_map(|(r, rip, vcpu, vmx)| {
                let isa = if vmx { Isa::Vmx } else { Isa::Svm };
                ExitInfo::from(ExitFields {
                    reason: ExitCode::from_raw(u64::from(r), Some(isa)),
                    isa: Some(isa),
                    guest_rip: Some(rip),
                    info1: Some(rip ^ 1),
                    info2: Some(0),
                    intr_info: vcpu.map(IntrInfo),
                    error_code: vcpu,
                    vcpu_id: vcpu,
                    requests: None,
                })
            });
        prop_oneof![
            exit.clone().prop_map(EventKind::KvmExit),
            exit.prop_map(EventKind::KvmNestedVmexit),
            (any::<u32>(), proptest::option::of(any::<u64>()), proptest::option::of(any::<bool>()))
                .prop_map(|(v, rip, imm)| EventKind::KvmEntry(Entry {
                    vcpu_id: v,
                    rip,
                    immediate_exit: imm,
                    intr_info: None,
                    error_code: None
                })),
            (any::<bool>(), 0u32..16, any::<u64>()).prop_map(|(write, cr, val)| EventKind::KvmCr {
                write,
                cr,
                val
            }),
            (
                any::<u64>(),
                any::<u32>(),
                prop_oneof![
                    Just(MmuPage::ROLE_ALL_KNOWN),
                    Just(MmuPage::ROLE_KNOWN_KERNEL_PRINT),
                    Just(MmuPage::ROLE_KNOWN_PLUGIN),
                ],
                any::<u32>(),
                any::<bool>()
            )
                .prop_map(|(gfn, role, known, rc, created)| EventKind::KvmMmuGetPage {
                    page: MmuPage {
                        mmu_valid_gen: Some(0),
                        gfn,
                        role: MmuPageRole(role & known),
                        role_known: known,
                        root_count: rc,
                        unsync: false
                    },
                    created
                }),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..15)).prop_map(|(rip, b)| {
                EventKind::KvmEmulateInsn {
                    rip,
                    csbase: 0,
                    insn: InsnBytes::new(&b, b.len()),
                    flags: 5,
                    failed: false,
                }
            }),
        ]
    }

    /// `Line`'s text as the `fmt` machinery prints it from the documented format: the
    /// reference the byte writer ([`Line::write_to`]) must match exactly.
    fn reference_line(line: &Line<'_>) -> String {
        let e = line.event;
        let mut f = format!("{} [{:03}] {} ", format_ts(e.ts, line.clock), e.cpu, e.pid);
        match &e.comm {
            Some(c) => write!(f, "{:?}", &**c).unwrap(),
            None => f.push_str("\"?\""),
        }
        write!(f, " {}:{}", e.system(), e.name()).unwrap();
        let own_vcpu = e.kind.vcpu_id();
        if let Some(v) = line.vcpu.or(own_vcpu) {
            write!(f, " vcpu={v}").unwrap();
        }
        match e.kind.untyped_fields() {
            Some(untyped) => {
                for (name, value) in untyped.iter() {
                    write!(f, " {name}={value}").unwrap();
                }
            }
            None => {
                let mut fields = Vec::new();
                typed_fields(&e.kind, |field| fields.push(field));
                for field in fields {
                    if field.name == "vcpu_id" && own_vcpu.is_some() {
                        continue;
                    }
                    match (field.value.to_owned(), field.radix) {
                        (FieldValue::U64(v), Radix::Hex) => write!(f, " {}={v:#x}", field.name),
                        (value, _) => write!(f, " {}={value}", field.name),
                    }
                    .unwrap();
                }
            }
        }
        let decoded = e.kind.decoded();
        if !decoded.is_empty() {
            f.push_str(" |");
            for (name, value) in decoded {
                if value.contains(' ') {
                    write!(f, " {name}={value:?}").unwrap();
                } else {
                    write!(f, " {name}={value}").unwrap();
                }
            }
        }
        f
    }

    fn arb_value() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            any::<u64>().prop_map(FieldValue::U64),
            any::<i64>().prop_map(FieldValue::I64),
            any::<String>().prop_map(|s| FieldValue::Str(s.into())),
            "[ -~]{0,12}".prop_map(|s| FieldValue::Str(s.into())),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(|b| FieldValue::Bytes(b.into())),
            proptest::collection::vec(any::<u64>(), 0..5).prop_map(|a| FieldValue::Array(a.into())),
        ]
    }

    fn arb_event() -> impl Strategy<Value = Event> {
        let other = ("[a-z_]{1,8}", proptest::collection::vec(("[a-z_]{1,6}", arb_value()), 0..6))
            .prop_map(|(name, fields)| {
                let mut f = Fields::new();
                for (n, v) in fields {
                    f.push(n.as_str(), v);
                }
                EventKind::Other(Box::new(vmxray_events::event::OtherEvent {
                    system: "sched".into(),
                    name: name.as_str().into(),
                    fields: f,
                }))
            });
        let kind = prop_oneof![
            arb_kind(),
            other,
            (any::<u32>(), any::<u32>()).prop_map(|(r, e)| EventKind::KvmUserspaceExit {
                reason: UserspaceExitReason(r % 40),
                errno: Some(i32::from_ne_bytes(e.to_ne_bytes())),
            }),
            (any::<String>(), any::<u32>()).prop_map(|(m, e)| EventKind::KvmNestedVmenterFailed {
                kind: vmxray_events::VmFailKind::of_message(&m),
                msg: m.into(),
                err: vmxray_events::codes::VmInstructionError(e % 30),
            }),
            proptest::option::of(any::<u64>()).prop_map(|count| EventKind::Lost { count }),
        ];
        let comm = prop_oneof![
            Just(None),
            "[ -~]{0,16}".prop_map(|c| Some(vmxray_events::Comm::from(c.as_str()))),
            any::<String>().prop_map(|c| Some(vmxray_events::Comm::from(c.as_str()))),
        ];
        (any::<u64>(), any::<u32>(), any::<i32>(), comm, kind)
            .prop_map(|(ts, cpu, pid, comm, kind)| Event { tgid: None, ts, cpu, pid, comm, kind })
    }

    #[test]
    fn ordered_writer_prints_every_event_in_push_order() {
        // Enough batches that buffers are recycled many times over.
        let events: Vec<Event> = (0..(RENDER_BATCH * 7 + 123) as u64)
            .map(|i| Event {
                ts: i * 1_001,
                cpu: (i % 3) as u32,
                pid: 100 + (i % 5) as i32,
                tgid: None,
                comm: (i % 4 != 0).then(|| vmxray_events::Comm::from("CPU 0/KVM")),
                kind: EventKind::KvmPio {
                    write: i % 2 == 0,
                    port: 0x3f8,
                    size: 1,
                    count: 1,
                    val: Some((i % 256) as u32),
                },
            })
            .collect();
        for format in [Format::Text, Format::Jsonl] {
            let mut want = Vec::new();
            for (i, e) in events.iter().enumerate() {
                format.render(e, &Clock::Local, (i % 2 == 0).then_some(1), None, &mut want);
            }
            for parallel in [true, false] {
                let mut w = OrderedWriter::new(Vec::new(), Clock::Local, format, parallel);
                for (i, e) in events.iter().enumerate() {
                    w.push(e.clone(), (i % 2 == 0).then_some(1)).unwrap();
                }
                let got = w.finish().unwrap();
                assert!(got == want, "{format:?} parallel={parallel}: output differs");
            }
        }
    }

    proptest! {
        /// The kernel-field rendering is the exact inverse of decoding.
        #[test]
        fn kernel_fields_round_trip(kind in arb_kind()) {
            let fields = kind.kernel_fields();
            let known = KnownEvent::lookup(kind.system(), kind.name()).unwrap();
            prop_assert_eq!(known.decode(&fields).unwrap(), kind);
        }

        /// The byte writer prints exactly what the reference `fmt` rendering prints.
        #[test]
        fn line_bytes_match_the_reference_rendering(
            event in arb_event(),
            vcpu in proptest::option::of(0u32..300),
            ns in any::<bool>(),
        ) {
            let clock = if ns { Clock::Local } else { Clock::X86Tsc };
            let line = Line { event: &event, clock: &clock, vcpu, print: None };
            prop_assert_eq!(line.to_string(), reference_line(&line));
        }
    }
}
