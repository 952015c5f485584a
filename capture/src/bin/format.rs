//! tracefs event format files (`events/<sys>/<event>/format`, `header_page`, `header_event`)
//! and format-driven field decoding.
//!
//! The parser is hand-written rather than built on `nom` or `tracepoint_decode`: the grammar is
//! line-oriented (`kernel/trace/trace_events.c` `f_show()`), and owning it lets us keep what
//! those do not give us in one pass — the `__print_symbolic` tables, the file's byte order and
//! long size applied to every field, and errors that name the line.
//!
//! Decoding is driven by the parsed layout only: an [`EventFormats`] table maps the event ids of
//! *this* capture (they change per boot) to an [`EventFormat`], with the [`KnownEvent`]
//! classification and the field offsets computed once, so the per-event path reads
//! `common_type`, indexes a vector and reads fields at known offsets.
//!
//! ```
//! use vmxray_capture::bin::format::{EventFormat, EventFormats};
//! use vmxray_capture::bin::Endian;
//! use vmxray_events::FieldLookup;
//!
//! let text = "name: kvm_cr\nID: 98\nformat:\n\
//!     \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
//!     \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
//!     \tfield:unsigned int rw;\toffset:8;\tsize:4;\tsigned:0;\n\
//!     \tfield:unsigned int cr;\toffset:12;\tsize:4;\tsigned:0;\n\
//!     \tfield:unsigned long val;\toffset:16;\tsize:8;\tsigned:0;\n\n\
//!     print fmt: \"cr_%s %x = 0x%lx\", REC->rw ? \"write\" : \"read\", REC->cr, REC->val\n";
//! let mut formats = EventFormats::new(Endian::Little, 8);
//! formats.add(EventFormat::parse("kvm", text.as_bytes(), 8).unwrap());
//! let mut payload = vec![0u8; 24];
//! payload[0] = 98;
//! payload[8] = 1;
//! payload[12] = 3;
//! payload[16] = 0x42;
//! let record = formats.record(&payload).unwrap();
//! assert_eq!(record.uint("cr"), Some(3));
//! assert_eq!(record.uint("val"), Some(0x42));
//! ```

use std::sync::Arc;

use crate::bin::Endian;
use vmxray_events::event::{DecodeError, EventKind, KnownEvent, OtherEvent};
use vmxray_events::fields::{FieldLookup, FieldName, FieldValue, Fields, sign_extend};

mod hot;

/// A format file could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The text is not UTF-8.
    #[error("Format file is not UTF-8 text")]
    NotText,
    /// The `name:` line is missing.
    #[error("Format file has no `name:` line")]
    MissingName,
    /// The `ID:` line is missing or not a number.
    #[error("Format file of `{name}` has no valid `ID:` line")]
    MissingId {
        /// The event's name.
        name: String,
    },
    /// A `field:` line is malformed.
    #[error("Line {line}: malformed field description")]
    BadField {
        /// 1-based line in the format text.
        line: usize,
    },
    /// header_page lacks a field the page layout needs.
    #[error("header_page has no `{field}` field")]
    HeaderField {
        /// The missing field.
        field: &'static str,
    },
    /// header_page describes an impossible page.
    #[error("header_page describes an unusable page layout")]
    BadPageLayout,
}

/// How a field's bytes are laid out in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldLayout {
    /// An integer of 1, 2, 4 or 8 bytes.
    Scalar,
    /// A fixed array (`__u8 insn[15]`, `char comm[16]`).
    Array {
        /// Bytes per element.
        elem_size: u32,
    },
    /// `__data_loc T[] name`: u32 at the offset, `offset = v & 0xffff`, `len = v >> 16`,
    /// counted from the start of the record.
    DataLoc {
        /// Bytes per element.
        elem_size: u32,
    },
    /// `__rel_loc T[] name` (5.18+): like `__data_loc` but the offset counts from the end of
    /// the 4-byte field.
    RelLoc {
        /// Bytes per element.
        elem_size: u32,
    },
    /// A trailing `size:0` flexible array (`char buf[]`): runs to the end of the record.
    Flexible {
        /// Bytes per element.
        elem_size: u32,
    },
    /// Any other size: kept as raw bytes.
    Opaque,
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldFormat {
    /// The field's name (`exit_reason`).
    pub name: FieldName,
    /// The C type without the name (`unsigned int`, `__data_loc char[]`, `__u8`).
    pub c_type: Box<str>,
    /// Offset in the record (from `common_type`).
    pub offset: u32,
    /// Size in bytes (0 for flexible arrays).
    pub size: u32,
    /// `signed:1`.
    pub signed: bool,
    /// Layout of the bytes.
    pub layout: FieldLayout,
    /// The elements are characters: the value is a NUL-terminated string.
    pub is_string: bool,
    key: NameKey,
}

/// A name packed for comparison: the first 16 bytes in two words and the length, so that a
/// lookup compares words (bytes only for names longer than 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NameKey(u64, u64, usize);

impl NameKey {
    #[inline]
    fn of(name: &str) -> Self {
        let b = name.as_bytes();
        let mut w = [0u8; 16];
        let n = b.len().min(16);
        w[..n].copy_from_slice(&b[..n]);
        let (lo, hi) = w.split_at(8);
        Self(
            u64::from_le_bytes(lo.try_into().unwrap_or_default()),
            u64::from_le_bytes(hi.try_into().unwrap_or_default()),
            b.len(),
        )
    }
}

impl FieldFormat {
    /// True for the `common_*` fields of `struct trace_entry`.
    pub fn is_common(&self) -> bool {
        self.name.starts_with("common_")
    }

    /// The field's bytes in `payload` (for dynamic arrays, the array's bytes), or `None` when the
    /// record is too short or the location points outside it.
    pub fn slice<'p>(&self, payload: &'p [u8], endian: Endian) -> Option<&'p [u8]> {
        let off = usize::try_from(self.offset).ok()?;
        match self.layout {
            FieldLayout::Scalar | FieldLayout::Array { .. } | FieldLayout::Opaque => {
                let end = off.checked_add(usize::try_from(self.size).ok()?)?;
                payload.get(off..end)
            }
            FieldLayout::DataLoc { .. } | FieldLayout::RelLoc { .. } => {
                let v = endian.u32(payload, off)?;
                let mut start = usize::try_from(v & 0xffff).ok()?;
                let len = usize::try_from(v >> 16).ok()?;
                if let FieldLayout::RelLoc { .. } = self.layout {
                    start = start.checked_add(off)?.checked_add(4)?;
                }
                payload.get(start..start.checked_add(len)?)
            }
            FieldLayout::Flexible { .. } => payload.get(off..),
        }
    }

    /// The field as an unsigned integer (signed fields sign-extended to 64 bits, like
    /// [`FieldValue::as_u64`]); `None` for arrays.
    #[inline]
    pub fn read_uint(&self, payload: &[u8], endian: Endian) -> Option<u64> {
        match self.layout {
            FieldLayout::Scalar => {
                let raw =
                    endian.uint(payload, usize::try_from(self.offset).ok()?, self.size as usize)?;
                if self.signed {
                    Some(u64::from_ne_bytes(sign_extend(raw, self.size).to_ne_bytes()))
                } else {
                    Some(raw)
                }
            }
            FieldLayout::Array { .. }
            | FieldLayout::DataLoc { .. }
            | FieldLayout::RelLoc { .. }
            | FieldLayout::Flexible { .. }
            | FieldLayout::Opaque => None,
        }
    }

    /// Decodes the field into a value; `None` when the record is too short for it.
    pub fn value(&self, payload: &[u8], endian: Endian) -> Option<FieldValue> {
        if let FieldLayout::Scalar = self.layout {
            let raw =
                endian.uint(payload, usize::try_from(self.offset).ok()?, self.size as usize)?;
            return Some(if self.signed {
                FieldValue::I64(sign_extend(raw, self.size))
            } else {
                FieldValue::U64(raw)
            });
        }
        let bytes = self.slice(payload, endian)?;
        if self.is_string {
            return Some(FieldValue::Str(String::from_utf8_lossy(until_nul(bytes)).into()));
        }
        let elem_size = match self.layout {
            FieldLayout::Array { elem_size }
            | FieldLayout::DataLoc { elem_size }
            | FieldLayout::RelLoc { elem_size }
            | FieldLayout::Flexible { elem_size } => elem_size,
            FieldLayout::Scalar | FieldLayout::Opaque => 1,
        };
        Some(match elem_size {
            2 | 4 | 8 => {
                let n = elem_size as usize;
                FieldValue::Array(
                    bytes.chunks_exact(n).filter_map(|c| endian.uint(c, 0, n)).collect(),
                )
            }
            _ => FieldValue::Bytes(bytes.into()),
        })
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    match memchr::memchr(0, bytes) {
        Some(n) => bytes.get(..n).unwrap_or(bytes),
        None => bytes,
    }
}

/// A `__print_symbolic(REC->field..., { value, "NAME" }, ...)` or `__print_flags` table from an
/// event's print fmt, so that codes a newer kernel added can still be named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolTable {
    /// The first `REC->` field the value expression uses (`exit_reason`), if any.
    pub field: Option<Box<str>>,
    /// The value expression as written (`REC->exit_reason & 0xffff`).
    pub expr: Box<str>,
    /// `__print_flags` (bit names) rather than `__print_symbolic` (value names).
    pub flags: bool,
    /// `(value, name)` pairs in the file's order.
    pub entries: Vec<(u64, Box<str>)>,
}

impl SymbolTable {
    /// The name of `value` in this table.
    pub fn name_of(&self, value: u64) -> Option<&str> {
        self.entries.iter().find(|(v, _)| *v == value).map(|(_, n)| &**n)
    }
}

/// One parsed `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    /// The event id in this capture (`ID:`).
    pub id: u32,
    /// The system (directory name, or the trace.dat/perf system string).
    pub system: Arc<str>,
    /// The event name (`name:`).
    pub name: Arc<str>,
    /// Every field, common ones first, in file order.
    pub fields: Vec<FieldFormat>,
    /// The `print fmt:` text.
    pub print_fmt: Box<str>,
    /// The whole format file as read, so that a writer can store it unchanged.
    pub text: Box<str>,
    /// The symbol tables found in the print fmt.
    pub symbols: Vec<SymbolTable>,
    /// The vocabulary's classification, computed once.
    pub known: Option<KnownEvent>,
    /// The field lookups [`KnownEvent::decode`] makes, in order, resolved to field indices
    /// once (see [`Record`]).
    plan: Vec<PlanStep>,
    /// For the hot tracepoints (exits, entries, nested exits, injections and entries, the MMU's
    /// page walks), their fields' places ([`EventFormat::decode_hot`]).
    hot: Option<hot::HotLayout>,
    /// See [`EventFormat::role_bit4_inverted`].
    role_bit4_inverted: bool,
    /// See [`EventFormat::plain_kvm`].
    plain_kvm: bool,
    /// The kernel's `sizeof(long)` the format was parsed with.
    long_size: u32,
    /// The print fmt, compiled on first use.
    print: PrintCache,
}

/// [`EventFormat::print`]'s compiled print fmt, made on first use so that commands that never
/// render text do not parse the print fmts of a trace's thousands of formats. A cache: two
/// formats compare equal whether or not it was filled.
#[derive(Clone, Debug, Default)]
struct PrintCache(std::sync::OnceLock<crate::printfmt::PrintFmt>);

impl PartialEq for PrintCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PrintCache {}

/// One planned lookup: the name asked (its address and length, and packed), its field, and
/// for a scalar field where its bytes are (read without going through the field).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PlanStep {
    addr: usize,
    len: usize,
    key: NameKey,
    field: Option<u16>,
    scalar: Option<ScalarAt>,
}

/// Where a scalar field's bytes are: 1, 2, 4 or 8 bytes at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ScalarAt {
    offset: usize,
    size: u8,
    /// The bits of a `u64` the field does not fill: 64 - 8 × size.
    unused: u8,
    signed: bool,
}

impl ScalarAt {
    fn of(f: &FieldFormat) -> Option<Self> {
        match (&f.layout, u8::try_from(f.size)) {
            (FieldLayout::Scalar, Ok(size @ (1 | 2 | 4 | 8))) => {
                Some(Self::new(usize::try_from(f.offset).ok()?, size, f.signed))
            }
            _ => None,
        }
    }

    /// A field of `size` bytes (1, 2, 4 or 8) at `offset`.
    fn new(offset: usize, size: u8, signed: bool) -> Self {
        Self { offset, size, unused: 64 - 8 * size.min(8), signed }
    }

    /// The value, as [`FieldFormat::read_uint`] reads it.
    ///
    /// With 8 bytes readable at the offset (most fields: a record is padded to 4 bytes and the
    /// common header comes first), one 8-byte load cut to the field's size, with no branch on
    /// the size: a record's fields have different sizes, and the jump table of a per-size read
    /// was mispredicted at nearly every field.
    #[inline]
    fn read(self, payload: &[u8], endian: Endian) -> Option<u64> {
        let unused = u32::from(self.unused);
        let raw = match endian.u64(payload, self.offset) {
            Some(word) => match endian {
                Endian::Little => word & (u64::MAX >> unused),
                Endian::Big => word >> unused,
            },
            None => endian.uint(payload, self.offset, usize::from(self.size))?,
        };
        Some(if self.signed {
            // Sign-extended by shifting the field's top bit to the word's and back.
            let top = i64::from_ne_bytes((raw << unused).to_ne_bytes()) >> unused;
            u64::from_ne_bytes(top.to_ne_bytes())
        } else {
            raw
        })
    }
}

/// Records the names a typed decode asks for, in order, and resolves them against the format.
/// Decoding a record then replays this plan: the n-th lookup checks that it asks for the
/// planned name and goes straight to the field, with no scan. The check is first by the
/// address of the name (the vocabulary passes the same string literals every time; the
/// address is only compared, never dereferenced), then by the packed name.
fn lookup_plan(format: &EventFormat) -> Vec<PlanStep> {
    struct Recorder<'f> {
        format: &'f EventFormat,
        asked: std::cell::RefCell<Vec<PlanStep>>,
    }
    impl Recorder<'_> {
        fn note(&self, name: &str) -> Option<&FieldFormat> {
            let idx = self.format.field_index(name);
            self.asked.borrow_mut().push(PlanStep {
                addr: name.as_ptr() as usize,
                len: name.len(),
                key: NameKey::of(name),
                field: idx.and_then(|i| u16::try_from(i).ok()),
                scalar: idx.and_then(|i| self.format.fields.get(i)).and_then(ScalarAt::of),
            });
            self.format.fields.get(idx?)
        }
    }
    impl FieldLookup for Recorder<'_> {
        fn uint(&self, name: &str) -> Option<u64> {
            self.note(name).filter(|f| matches!(f.layout, FieldLayout::Scalar)).map(|_| 0)
        }
        fn string(&self, name: &str) -> Option<&str> {
            self.note(name).filter(|f| f.is_string).map(|_| "")
        }
        fn bytes(&self, name: &str) -> Option<&[u8]> {
            self.note(name).filter(|f| !matches!(f.layout, FieldLayout::Scalar)).map(|_| &[][..])
        }
        fn to_fields(&self) -> Fields {
            Fields::new()
        }
    }
    let Some(known) = format.known else { return Vec::new() };
    let rec = Recorder { format, asked: Default::default() };
    let _ = known.decode(&rec);
    rec.asked.into_inner()
}

impl EventFormat {
    /// Parses a `format` file of `system`. `long_size` resolves `long` in dynamic array element
    /// types.
    pub fn parse(system: &str, text: &[u8], long_size: u32) -> Result<Self, FormatError> {
        let text = std::str::from_utf8(text).map_err(|_| FormatError::NotText)?;
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        let mut print_fmt = "";
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("name:") {
                name = Some(rest.trim());
            } else if let Some(rest) = t.strip_prefix("ID:") {
                id = rest.trim().parse::<u32>().ok();
            } else if t.starts_with("field:") || t.starts_with("field ") {
                fields.push(
                    parse_field_line(t, long_size).ok_or(FormatError::BadField { line: i + 1 })?,
                );
            } else if t.starts_with("print fmt:") {
                // The print fmt is the rest of the file: a format string may hold a newline
                // (ext4's fsmap events), which the kernel writes as is.
                let at = line.as_ptr() as usize - text.as_ptr() as usize;
                let rest = text.get(at..).unwrap_or("").trim_start();
                print_fmt = rest.strip_prefix("print fmt:").unwrap_or(rest).trim();
                break;
            }
        }
        let name = name.ok_or(FormatError::MissingName)?;
        let id = id.ok_or_else(|| FormatError::MissingId { name: name.to_owned() })?;
        let known = KnownEvent::lookup(system, name);
        let mut format = Self {
            id,
            system: system.into(),
            name: name.into(),
            fields,
            print_fmt: print_fmt.into(),
            text: text.into(),
            symbols: parse_symbol_tables(print_fmt),
            known,
            plan: Vec::new(),
            hot: None,
            // Kernels before 5.18 named role bit 4 `cr4_pae`, then `gpte_is_8_bytes`: set for
            // 8-byte guest PTEs, the opposite of today's `has_4_byte_gpte`. The print fmt names
            // the bit, so it says which layout the raw word is in.
            role_bit4_inverted: print_fmt.contains("role.gpte_is_8_bytes")
                || print_fmt.contains("role.cr4_pae"),
            plain_kvm: false,
            long_size,
            print: PrintCache::default(),
        };
        format.plan = lookup_plan(&format);
        format.hot = hot::HotLayout::of(&format);
        format.plain_kvm = format.known.is_none()
            && OtherEvent::is_plain_kvm(&format.system, format.fields.iter().map(|f| &*f.name));
        Ok(format)
    }

    /// True when the event is an untyped KVM tracepoint whose events are plain `Other` events
    /// naming no vCPU ([`OtherEvent::is_plain_kvm`]): what [`crate::ReadOptions::count_only`]
    /// may count without decoding.
    pub fn plain_kvm(&self) -> bool {
        self.plain_kvm
    }

    /// Decodes a record of a hot tracepoint (`kvm_exit`, `kvm_entry`, `kvm_nested_vmexit` in
    /// `kvm_exit`'s layout, `kvm_nested_vmexit_inject`, `kvm_nested_vmenter`/`vmrun`,
    /// `kvm_mmu_paging_element`, `kvm_mmu_pagetable_walk`) into `out`, reading its fields from
    /// places resolved once: the event [`KnownEvent::decode`] builds from a [`Record`] of it.
    /// False, with `out` untouched, for any other format or a record the generic decoder is to
    /// decide (and report).
    #[inline]
    pub fn decode_hot(&self, payload: &[u8], endian: Endian, out: &mut EventKind) -> bool {
        // By reference: `is_some_and` on the `Option` itself copied the ~170-byte layout to
        // the stack (a `memcpy` call) for every record.
        self.hot.as_ref().is_some_and(|h| h.decode_into(payload, endian, out))
    }

    /// True when this event's `role` word is in a pre-5.18 layout, whose bit 4 means 8-byte
    /// guest PTEs (`cr4_pae`, `gpte_is_8_bytes`) rather than `has_4_byte_gpte`. Decoding flips
    /// the bit so that the typed [`vmxray_events::MmuPage`] reads the same on every kernel; encoding
    /// for such a format flips it back.
    pub fn role_bit4_inverted(&self) -> bool {
        self.role_bit4_inverted
    }

    /// The print fmt, compiled against this format's fields once (on first use); render a
    /// record with [`crate::printfmt::PrintFmt::render`].
    pub fn print(&self) -> &crate::printfmt::PrintFmt {
        self.print.0.get_or_init(|| {
            crate::printfmt::PrintFmt::compile(&self.print_fmt, &self.fields, self.long_size)
        })
    }

    fn field_index(&self, name: &str) -> Option<usize> {
        let key = NameKey::of(name);
        self.fields.iter().position(|f| f.key == key && (key.2 <= 16 || &*f.name == name))
    }

    /// The field called `name`.
    #[inline]
    pub fn field(&self, name: &str) -> Option<&FieldFormat> {
        let key = NameKey::of(name);
        self.fields.iter().find(|f| f.key == key && (key.2 <= 16 || &*f.name == name))
    }

    /// The symbol tables applying to `field`.
    pub fn symbols_for<'s>(&'s self, field: &'s str) -> impl Iterator<Item = &'s SymbolTable> {
        self.symbols.iter().filter(move |t| t.field.as_deref() == Some(field))
    }
}

/// Parses `field:<decl>;\toffset:<n>;\tsize:<n>;\tsigned:<0|1>;`.
fn parse_field_line(line: &str, long_size: u32) -> Option<FieldFormat> {
    let rest = line.strip_prefix("field")?.trim_start_matches([':', ' ']);
    let mut parts = rest.split(';');
    let decl = parts.next()?.trim();
    let (mut offset, mut size, mut signed) = (None, None, false);
    for p in parts {
        let p = p.trim();
        if let Some(v) = p.strip_prefix("offset:") {
            offset = v.trim().parse::<u32>().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.trim().parse::<u32>().ok();
        } else if let Some(v) = p.strip_prefix("signed:") {
            signed = v.trim() == "1";
        }
    }
    let (offset, size) = (offset?, size?);
    // Strip a trailing `[N]` (the name's array suffix); `T[] name` keeps its `[]` in the type.
    let (base, array_spec) = match decl.strip_suffix(']') {
        Some(inner) => {
            let open = inner.rfind('[')?;
            (inner.get(..open)?.trim_end(), Some(inner.get(open + 1..)?.trim()))
        }
        None => (decl, None),
    };
    let name_start = base
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
        .last()
        .map(|(i, _)| i)?;
    let name = base.get(name_start..)?;
    let c_type = base.get(..name_start)?.trim();
    if name.is_empty() {
        return None;
    }
    let is_string = is_char_type(c_type);
    let elem_guess = element_size(c_type, long_size).unwrap_or(1);
    let layout = if c_type.starts_with("__data_loc") {
        FieldLayout::DataLoc { elem_size: elem_guess }
    } else if c_type.starts_with("__rel_loc") {
        FieldLayout::RelLoc { elem_size: elem_guess }
    } else if let Some(spec) = array_spec {
        if size == 0 {
            FieldLayout::Flexible { elem_size: elem_guess }
        } else {
            let elem_size = match spec.parse::<u32>() {
                Ok(count) if count > 0 && size % count == 0 => size / count,
                _ => elem_guess,
            };
            FieldLayout::Array { elem_size }
        }
    } else if matches!(size, 1 | 2 | 4 | 8) {
        FieldLayout::Scalar
    } else {
        FieldLayout::Opaque
    };
    let is_string = is_string && !matches!(layout, FieldLayout::Scalar);
    Some(FieldFormat {
        key: NameKey::of(name),
        name: name.into(),
        c_type: c_type.into(),
        offset,
        size,
        signed,
        layout,
        is_string,
    })
}

fn type_words(c_type: &str) -> impl Iterator<Item = &str> {
    c_type.split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '*').filter(|w| {
        !w.is_empty() && !matches!(*w, "const" | "volatile" | "__data_loc" | "__rel_loc" | "struct")
    })
}

fn is_char_type(c_type: &str) -> bool {
    let mut has_char = false;
    for w in type_words(c_type) {
        match w {
            "char" => has_char = true,
            "unsigned" | "u8" | "__u8" => return false,
            _ => {}
        }
    }
    has_char
}

/// The size of one element of a C type, for arrays whose count the format does not give.
fn element_size(c_type: &str, long_size: u32) -> Option<u32> {
    let mut longs = 0;
    let mut size = None;
    for w in type_words(c_type) {
        match w {
            "char" | "u8" | "s8" | "__u8" | "__s8" | "bool" | "_Bool" => size = Some(1),
            "short" | "u16" | "s16" | "__u16" | "__s16" => size = Some(2),
            "int" | "u32" | "s32" | "__u32" | "__s32" => size = size.or(Some(4)),
            "u64" | "s64" | "__u64" | "__s64" => size = Some(8),
            "long" => longs += 1,
            _ => {}
        }
    }
    match longs {
        0 => size,
        1 => Some(long_size),
        _ => Some(8),
    }
}

/// Extracts every `__print_symbolic(...)` / `__print_flags(...)` table from a print fmt.
fn parse_symbol_tables(print_fmt: &str) -> Vec<SymbolTable> {
    let mut out = Vec::new();
    for (marker, flags) in [("__print_symbolic(", false), ("__print_flags(", true)] {
        let mut from = 0;
        while let Some(pos) = print_fmt.get(from..).and_then(|s| s.find(marker)) {
            let start = from + pos + marker.len();
            from = start;
            if let Some(table) = parse_one_table(print_fmt.get(start..).unwrap_or(""), flags) {
                out.push(table);
            }
        }
    }
    out
}

fn parse_one_table(s: &str, flags: bool) -> Option<SymbolTable> {
    // The value expression runs to the first comma outside parentheses.
    let mut depth = 0i32;
    let mut expr_end = None;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return None,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                expr_end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let expr_end = expr_end?;
    let expr = s.get(..expr_end)?.trim();
    let field = expr.find("REC->").and_then(|p| {
        let rest = expr.get(p + 5..)?;
        let end =
            rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        Some(Box::<str>::from(rest.get(..end)?))
    });
    let mut rest = s.get(expr_end + 1..)?;
    let mut entries = Vec::new();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        if rest.starts_with('"') {
            // __print_flags' delimiter string.
            let close = rest.get(1..)?.find('"')?;
            rest = rest.get(close + 2..)?;
            continue;
        }
        let Some(body) = rest.strip_prefix('{') else { break };
        let close = body.find('}')?;
        let entry = body.get(..close)?;
        rest = body.get(close + 1..)?;
        let Some((value, name)) = entry.split_once(',') else { continue };
        let name = name.trim().trim_matches('"');
        if let Some(v) = parse_c_int(value.trim()) {
            entries.push((v, name.into()));
        }
    }
    Some(SymbolTable { field, expr: expr.into(), flags, entries })
}

fn parse_c_int(s: &str) -> Option<u64> {
    let s = s.trim_matches(|c: char| c == '(' || c == ')' || c.is_whitespace());
    let s = s.trim_end_matches(['U', 'L', 'u', 'l']);
    if let Some(neg) = s.strip_prefix('-') {
        let v = parse_c_int(neg)?;
        return Some(v.wrapping_neg());
    }
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse::<u64>().ok()
    }
}

/// The sub-buffer ("page") layout described by `events/header_page`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLayout {
    /// Byte order of the kernel that wrote the pages.
    pub endian: Endian,
    /// Offset of the u64 page timestamp.
    pub timestamp_offset: u32,
    /// Offset of the `commit` word.
    pub commit_offset: u32,
    /// Size of the `commit` word (`sizeof(long)`: 8 on 64-bit kernels, 4 on 32-bit).
    pub commit_size: u32,
    /// Offset of the event data (16 on 64-bit kernels).
    pub data_offset: u32,
    /// The sub-buffer size: `data.offset + data.size` (not the host page size).
    pub page_size: u32,
    /// record `type_len` of padding / time extend / absolute time stamp, and the largest
    /// data `type_len` (from `header_event`; 29/30/31/28 on every kernel so far).
    pub types: RecordTypes,
}

/// The special record `type_len` values from `header_event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordTypes {
    /// `padding : type == 29`.
    pub padding: u32,
    /// `time_extend : type == 30`.
    pub time_extend: u32,
    /// `time_stamp : type == 31`.
    pub time_stamp: u32,
    /// `data max type_len == 28`.
    pub data_max: u32,
}

impl Default for RecordTypes {
    fn default() -> Self {
        Self { padding: 29, time_extend: 30, time_stamp: 31, data_max: 28 }
    }
}

impl PageLayout {
    /// The layout of a 64-bit kernel with 4 KiB sub-buffers in the given byte order.
    pub fn default_64(endian: Endian) -> Self {
        Self {
            endian,
            timestamp_offset: 0,
            commit_offset: 8,
            commit_size: 8,
            data_offset: 16,
            page_size: 4096,
            types: RecordTypes::default(),
        }
    }

    /// Parses `header_page` (and optionally `header_event`) text.
    pub fn parse(
        header_page: &[u8],
        header_event: Option<&[u8]>,
        endian: Endian,
    ) -> Result<Self, FormatError> {
        let text = std::str::from_utf8(header_page).map_err(|_| FormatError::NotText)?;
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.starts_with("field") {
                fields.push(parse_field_line(t, 8).ok_or(FormatError::BadField { line: i + 1 })?);
            }
        }
        let get = |name: &'static str| {
            fields.iter().find(|f| &*f.name == name).ok_or(FormatError::HeaderField { field: name })
        };
        let ts = get("timestamp")?;
        let commit = get("commit")?;
        let data = get("data")?;
        if !matches!(commit.size, 4 | 8) || data.size == 0 {
            return Err(FormatError::BadPageLayout);
        }
        let page_size = data.offset.checked_add(data.size).ok_or(FormatError::BadPageLayout)?;
        let min_header =
            commit.offset.checked_add(commit.size).ok_or(FormatError::BadPageLayout)?;
        if data.offset < min_header || ts.offset.checked_add(8).is_none_or(|e| e > data.offset) {
            return Err(FormatError::BadPageLayout);
        }
        let types = header_event.map(parse_header_event).unwrap_or_default();
        Ok(Self {
            endian,
            timestamp_offset: ts.offset,
            commit_offset: commit.offset,
            commit_size: commit.size,
            data_offset: data.offset,
            page_size,
            types,
        })
    }

    /// The kernel's `sizeof(long)`.
    pub fn long_size(&self) -> u32 {
        self.commit_size
    }
}

fn parse_header_event(text: &[u8]) -> RecordTypes {
    let mut t = RecordTypes::default();
    let Ok(text) = std::str::from_utf8(text) else { return t };
    for line in text.lines() {
        let line = line.trim();
        let num = || line.rsplit("==").next().and_then(|v| v.trim().parse::<u32>().ok());
        if line.starts_with("padding") {
            t.padding = num().unwrap_or(t.padding);
        } else if line.starts_with("time_extend") {
            t.time_extend = num().unwrap_or(t.time_extend);
        } else if line.starts_with("time_stamp") {
            t.time_stamp = num().unwrap_or(t.time_stamp);
        } else if line.starts_with("data max type_len") {
            t.data_max = num().unwrap_or(t.data_max);
        }
    }
    t
}

/// Where `common_type` and `common_pid` are (the same for every event of a kernel): read as
/// the hot fields are ([`ScalarAt::read`]), the id unsigned and the pid sign-extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CommonLayout {
    type_at: ScalarAt,
    pid_at: ScalarAt,
}

impl CommonLayout {
    /// `type_size` is 1, 2 or 4 and `pid_size` 4 or 8 (what [`EventFormats::add`] accepts).
    fn new(type_offset: usize, type_size: u8, pid_offset: usize, pid_size: u8) -> Self {
        Self {
            type_at: ScalarAt::new(type_offset, type_size, false),
            pid_at: ScalarAt::new(pid_offset, pid_size, true),
        }
    }
}

impl Default for CommonLayout {
    fn default() -> Self {
        Self::new(0, 2, 4, 4)
    }
}

/// Every event format of one capture, indexed by id.
#[derive(Clone, Debug, Default)]
pub struct EventFormats {
    by_id: Vec<Option<Arc<EventFormat>>>,
    endian: Endian,
    long_size: u32,
    common: CommonLayout,
    common_set: bool,
    printk: Arc<crate::printfmt::PrintkStrings>,
}

impl EventFormats {
    /// An empty table for a kernel of this byte order and long size.
    pub fn new(endian: Endian, long_size: u32) -> Self {
        Self {
            by_id: Vec::new(),
            endian,
            long_size,
            common: CommonLayout::default(),
            common_set: false,
            printk: Arc::default(),
        }
    }

    /// Keeps the trace's `printk_formats` text (`0xADDR : "string"` lines): a `%s` of a
    /// pointer field prints the string at that address ([`crate::printfmt`]).
    pub fn set_printk(&mut self, text: &[u8]) {
        self.printk = Arc::new(crate::printfmt::PrintkStrings::parse(text));
    }

    /// The trace's printk strings by address.
    pub fn printk(&self) -> &Arc<crate::printfmt::PrintkStrings> {
        &self.printk
    }

    /// The kernel's byte order.
    pub fn endian(&self) -> Endian {
        self.endian
    }

    /// The kernel's `sizeof(long)`.
    pub fn long_size(&self) -> u32 {
        self.long_size
    }

    /// Adds a format (a later one with the same id replaces the earlier).
    pub fn add(&mut self, format: EventFormat) {
        if !self.common_set
            && let (Some(t), Some(p)) = (format.field("common_type"), format.field("common_pid"))
            && let (Ok(t_size @ (1 | 2 | 4)), Ok(p_size @ (4 | 8))) =
                (u8::try_from(t.size), u8::try_from(p.size))
        {
            self.common = CommonLayout::new(t.offset as usize, t_size, p.offset as usize, p_size);
            self.common_set = true;
        }
        // Ids are u16 in `struct trace_entry`; refuse absurd ids instead of allocating for them.
        let Ok(idx) = usize::try_from(format.id) else { return };
        if idx > u16::MAX as usize {
            return;
        }
        if self.by_id.len() <= idx {
            self.by_id.resize(idx + 1, None);
        }
        if let Some(slot) = self.by_id.get_mut(idx) {
            *slot = Some(Arc::new(format));
        }
    }

    /// Parses and adds a format file of `system`.
    pub fn add_text(&mut self, system: &str, text: &[u8]) -> Result<(), FormatError> {
        let f = EventFormat::parse(system, text, self.long_size)?;
        self.add(f);
        Ok(())
    }

    /// The format of event `id`.
    #[inline]
    pub fn get(&self, id: u32) -> Option<&Arc<EventFormat>> {
        self.by_id.get(usize::try_from(id).ok()?)?.as_ref()
    }

    /// Finds a format by system and name.
    pub fn find(&self, system: &str, name: &str) -> Option<&Arc<EventFormat>> {
        self.iter().find(|f| &*f.name == name && (system.is_empty() || &*f.system == system))
    }

    /// Every format.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<EventFormat>> {
        self.by_id.iter().flatten()
    }

    /// Number of formats.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// True when no format is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event id (`common_type`) of a record.
    #[inline]
    pub fn event_id(&self, payload: &[u8]) -> Option<u32> {
        u32::try_from(self.common.type_at.read(payload, self.endian)?).ok()
    }

    /// The `common_pid` of a record.
    #[inline]
    pub fn pid(&self, payload: &[u8]) -> Option<i32> {
        let raw = self.common.pid_at.read(payload, self.endian)?;
        i32::try_from(i64::from_ne_bytes(raw.to_ne_bytes())).ok()
    }

    /// A record with its format, for field lookups; `None` when its id has no format.
    #[inline]
    pub fn record<'a>(&'a self, payload: &'a [u8]) -> Option<Record<'a>> {
        let format = self.get(self.event_id(payload)?)?;
        Some(Record::new(format, payload, self.endian))
    }

    /// Decodes a record into its [`EventKind`]: typed when the vocabulary knows the event, else
    /// [`EventKind::Other`] with every non-common field. Unknown ids give
    /// [`RecordError::UnknownId`].
    pub fn decode(&self, payload: &[u8]) -> Result<EventKind, RecordError> {
        let id = self.event_id(payload).ok_or(RecordError::TooShort)?;
        let format = self.get(id).ok_or(RecordError::UnknownId(id))?;
        let rec = Record::new(format, payload, self.endian);
        match format.known {
            Some(known) => known.decode(&rec).map_err(RecordError::Decode),
            None => Ok(EventKind::untyped(
                Arc::clone(&format.system),
                Arc::clone(&format.name),
                rec.to_fields(),
            )),
        }
    }
}

/// Why a record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than the common header.
    #[error("Record too short for its common header")]
    TooShort,
    /// No format has this id.
    #[error("No format describes event id {0}")]
    UnknownId(u32),
    /// A typed event lacked a field.
    #[error(transparent)]
    Decode(DecodeError),
}

/// A record's payload with its format: field lookups read the bytes at the format's offsets,
/// without building a field list. Lookups follow the format's precomputed plan when they ask
/// for the names in the planned order (as [`KnownEvent::decode`] does), else scan the fields.
#[derive(Clone, Debug)]
pub struct Record<'a> {
    /// The record's format.
    pub format: &'a EventFormat,
    /// The record's bytes, from `common_type` (may carry trailing padding).
    pub payload: &'a [u8],
    /// Byte order.
    pub endian: Endian,
    /// The format's lookup plan (held here: one load less per field than through `format`).
    plan: &'a [PlanStep],
    step: std::cell::Cell<usize>,
}

impl<'a> Record<'a> {
    /// A record of `format`.
    pub fn new(format: &'a EventFormat, payload: &'a [u8], endian: Endian) -> Self {
        Self { format, payload, endian, plan: &format.plan, step: std::cell::Cell::new(0) }
    }

    /// The next planned lookup, when it asks for `name`.
    #[inline]
    fn planned(&self, name: &str) -> Option<&'a PlanStep> {
        let step = self.step.get();
        self.step.set(step.wrapping_add(1));
        self.plan.get(step).filter(|plan| {
            (plan.addr == name.as_ptr() as usize && plan.len == name.len())
                || plan.key == NameKey::of(name)
        })
    }

    #[inline]
    fn field(&self, name: &str) -> Option<&'a FieldFormat> {
        match self.planned(name) {
            Some(plan) => self.format.fields.get(usize::from(plan.field?)),
            None => self.format.field(name),
        }
    }
}

impl Record<'_> {
    /// [`FieldLookup::uint`] off the fast path: a name asked by another string, out of the
    /// plan's order, or of a field that is no scalar.
    #[cold]
    #[inline(never)]
    fn uint_slow(&self, name: &str) -> Option<u64> {
        self.field(name)?.read_uint(self.payload, self.endian)
    }

    /// Every field including the `common_*` ones, in file order.
    pub fn all_fields(&self) -> Fields {
        let mut out = Fields::new();
        for f in &self.format.fields {
            if let Some(v) = f.value(self.payload, self.endian) {
                out.0.push((Arc::clone(&f.name), v));
            }
        }
        out
    }
}

impl FieldLookup for Record<'_> {
    #[inline]
    fn uint(&self, name: &str) -> Option<u64> {
        // The common case, small enough to inline into every decoder: the planned name, asked
        // by the string the plan saw, of a scalar field or of one the format lacks.
        let step = self.step.get();
        if let Some(plan) = self.plan.get(step)
            && plan.addr == name.as_ptr() as usize
            && plan.len == name.len()
            && (plan.scalar.is_some() || plan.field.is_none())
        {
            self.step.set(step.wrapping_add(1));
            return plan.scalar?.read(self.payload, self.endian);
        }
        self.uint_slow(name)
    }

    fn role_bit4_inverted(&self) -> bool {
        self.format.role_bit4_inverted
    }

    fn print_fmt(&self) -> Option<&str> {
        Some(&self.format.print_fmt)
    }

    fn string(&self, name: &str) -> Option<&str> {
        let f = self.field(name)?;
        if !f.is_string {
            return None;
        }
        std::str::from_utf8(until_nul(f.slice(self.payload, self.endian)?)).ok()
    }

    fn bytes(&self, name: &str) -> Option<&[u8]> {
        let f = self.field(name)?;
        match f.layout {
            FieldLayout::Scalar => None,
            FieldLayout::Array { .. }
            | FieldLayout::DataLoc { .. }
            | FieldLayout::RelLoc { .. }
            | FieldLayout::Flexible { .. }
            | FieldLayout::Opaque => {
                let b = f.slice(self.payload, self.endian)?;
                Some(if f.is_string { until_nul(b) } else { b })
            }
        }
    }

    fn to_fields(&self) -> Fields {
        // Sized once: growing the list field by field reallocated it up to three times.
        let mut out = Fields(Vec::with_capacity(
            self.format.fields.iter().filter(|f| !f.is_common()).count(),
        ));
        for f in self.format.fields.iter().filter(|f| !f.is_common()) {
            if let Some(v) = f.value(self.payload, self.endian) {
                out.0.push((Arc::clone(&f.name), v));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KVM_EXIT: &str =
        include_str!("../../../samples/real/raw/tracefs/events/kvm/kvm_exit/format");

    #[test]
    fn role_bit4_reads_as_has_4_byte_gpte_on_every_kernel() {
        let new = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../samples/real/raw/tracefs/events/kvmmmu/kvm_mmu_get_page/format"
        ))
        .unwrap();
        assert!(new.contains("role.has_4_byte_gpte ? 4 : 8"));
        // The same event as 5.x (gpte_is_8_bytes) and 4.x (cr4_pae) kernels print it.
        let v5 = new.replace("role.has_4_byte_gpte ? 4 : 8", "role.gpte_is_8_bytes ? 8 : 4");
        let v4 = new.replace("role.has_4_byte_gpte ? 4 : 8", "role.cr4_pae ? \" pae\" : \"\"");
        // An 8-byte-gpte root (a 64-bit guest's CR3 root, as every EPT root): level 4, bit 4
        // clear in the 6.x word, set in the older ones.
        for (text, word, inverted) in [(&new, 0x4u32, false), (&v5, 0x14, true), (&v4, 0x14, true)]
        {
            let f = EventFormat::parse("kvmmmu", text.as_bytes(), 8).unwrap();
            assert_eq!(f.role_bit4_inverted(), inverted);
            let mut payload =
                vec![0u8; f.fields.iter().map(|x| x.offset + x.size).max().unwrap() as usize];
            let role = f.field("role").unwrap();
            let at = role.offset as usize;
            payload[at..at + 4].copy_from_slice(&word.to_le_bytes());
            let kind = f.known.unwrap().decode(&Record::new(&f, &payload, Endian::Little)).unwrap();
            let vmxray_events::EventKind::KvmMmuGetPage { page, .. } = kind else {
                panic!("{kind:?}")
            };
            assert_eq!(page.role.level(), 4);
            assert_eq!(page.has_4_byte_gpte(), Some(false), "{word:#x} inverted={inverted}");
        }
    }

    #[test]
    fn a_planned_scalar_reads_as_the_field_reads_it() {
        // The planned read loads 8 bytes when it can and cuts them to the field's size: it
        // must give what the per-size read gives, in both byte orders, signed or not, at the
        // payload's end (fewer than 8 bytes left) and away from it.
        let payload: Vec<u8> = (0..24u8).map(|b| b.wrapping_mul(37) ^ 0x80).collect();
        for endian in [Endian::Little, Endian::Big] {
            for (decl, size, signed) in [
                ("u8 a", 1, false),
                ("s8 a", 1, true),
                ("u16 a", 2, false),
                ("s16 a", 2, true),
                ("u32 a", 4, false),
                ("s32 a", 4, true),
                ("u64 a", 8, false),
                ("s64 a", 8, true),
            ] {
                for offset in 0..=(24 - size) {
                    let line = format!(
                        "field:{decl};\toffset:{offset};\tsize:{size};\tsigned:{};",
                        u8::from(signed)
                    );
                    let f = parse_field_line(&line, 8).unwrap();
                    let at = ScalarAt::of(&f).unwrap();
                    let want = f.read_uint(&payload, endian);
                    assert!(want.is_some());
                    assert_eq!(at.read(&payload, endian), want, "{endian:?} {line}");
                }
                // Past the end: nothing, as the per-size read.
                let line = format!("field:{decl};\toffset:{};\tsize:{size};\tsigned:0;", 25 - size);
                let f = parse_field_line(&line, 8).unwrap();
                assert_eq!(ScalarAt::of(&f).unwrap().read(&payload, endian), None);
            }
        }
    }

    #[test]
    fn kvm_exit_layout_and_symbols() {
        let f = EventFormat::parse("kvm", KVM_EXIT.as_bytes(), 8).unwrap();
        assert_eq!(f.id, 103);
        assert_eq!(f.known, Some(KnownEvent::KvmExit));
        let rip = f.field("guest_rip").unwrap();
        assert_eq!((rip.offset, rip.size, rip.signed), (16, 8, false));
        assert_eq!(f.field("requests").unwrap().offset, 64);
        let tables: Vec<_> = f.symbols_for("exit_reason").collect();
        assert!(tables.len() >= 2, "VMX and SVM tables");
        assert_eq!(tables[0].name_of(48), Some("EPT_VIOLATION"));
        assert_eq!(tables[0].name_of(74), Some("BUS_LOCK"));
    }

    #[test]
    fn declarations() {
        let f = parse_field_line("field:__data_loc char[] msg;\toffset:8;\tsize:4;\tsigned:0;", 8)
            .unwrap();
        assert_eq!(&*f.name, "msg");
        assert_eq!(f.layout, FieldLayout::DataLoc { elem_size: 1 });
        assert!(f.is_string);
        let f =
            parse_field_line("field:__u8 insn[15];\toffset:21;\tsize:15;\tsigned:0;", 8).unwrap();
        assert_eq!(
            (&*f.name, f.layout, f.is_string),
            ("insn", FieldLayout::Array { elem_size: 1 }, false)
        );
        let f = parse_field_line("field:unsigned long args[];\toffset:24;\tsize:0;\tsigned:0;", 4)
            .unwrap();
        assert_eq!(f.layout, FieldLayout::Flexible { elem_size: 4 });
        let f =
            parse_field_line("field:unsigned long caller[8];\toffset:16;\tsize:64;\tsigned:0;", 8)
                .unwrap();
        assert_eq!(f.layout, FieldLayout::Array { elem_size: 8 });
        let f =
            parse_field_line("field: local_t commit;\toffset:8;\tsize:8;\tsigned:1;", 8).unwrap();
        assert_eq!((&*f.name, f.signed), ("commit", true));
        let f = parse_field_line("field:__rel_loc u32[] data;\toffset:8;\tsize:4;\tsigned:0;", 8)
            .unwrap();
        assert_eq!(f.layout, FieldLayout::RelLoc { elem_size: 4 });
    }

    #[test]
    fn common_type_and_pid_read_at_the_places_and_sizes_the_first_format_gives() {
        // A kernel with a 1-byte id and an 8-byte pid, in both byte orders; records as short as
        // the common fields, and shorter.
        let text = "name: t\nID: 200\nformat:\n\tfield:unsigned char common_type;\toffset:0;\tsize:1;\tsigned:0;\n\
            \tfield:long common_pid;\toffset:8;\tsize:8;\tsigned:1;\n";
        for endian in [Endian::Little, Endian::Big] {
            let mut fm = EventFormats::new(endian, 8);
            fm.add_text("x", text.as_bytes()).unwrap();
            let mut p = vec![0u8; 16];
            p[0] = 200;
            let pid = |v: i64| match endian {
                Endian::Little => v.to_le_bytes(),
                Endian::Big => v.to_be_bytes(),
            };
            p[8..16].copy_from_slice(&pid(-1));
            assert_eq!((fm.event_id(&p), fm.pid(&p)), (Some(200), Some(-1)), "{endian:?}");
            p[8..16].copy_from_slice(&pid(1 << 40));
            assert_eq!(fm.pid(&p), None, "a pid beyond i32 ({endian:?})");
            p[8..16].copy_from_slice(&pid(4242));
            assert_eq!(fm.pid(&p), Some(4242), "{endian:?}");
            assert_eq!((fm.event_id(&p[..1]), fm.pid(&p[..15])), (Some(200), None), "{endian:?}");
        }
        // The usual layout, with the id's top bit set: unsigned, not sign-extended.
        let mut fm = EventFormats::new(Endian::Little, 8);
        fm.add_text("x", "name: u\nID: 40000\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:1;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n".as_bytes()).unwrap();
        let mut p = [0u8; 6];
        p[..2].copy_from_slice(&40000u16.to_le_bytes());
        p[4..6].copy_from_slice(&[0xfe, 0xff]);
        assert_eq!((fm.event_id(&p), fm.pid(&p)), (Some(40000), None), "a pid cut short");
        let mut p = [0u8; 8];
        p[..2].copy_from_slice(&40000u16.to_le_bytes());
        p[4..8].copy_from_slice(&(-7i32).to_le_bytes());
        assert_eq!((fm.event_id(&p), fm.pid(&p)), (Some(40000), Some(-7)));
    }

    #[test]
    fn dynamic_arrays_decode() {
        let text = "name: t\nID: 7\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\
            \tfield:__data_loc char[] a;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:__rel_loc char[] b;\toffset:12;\tsize:4;\tsigned:0;\n\
            \tfield:short s;\toffset:16;\tsize:2;\tsigned:1;\n\
            \tfield:char tail[];\toffset:18;\tsize:0;\tsigned:0;\n";
        let mut fm = EventFormats::new(Endian::Big, 8);
        fm.add_text("x", text.as_bytes()).unwrap();
        let mut p = vec![0u8; 32];
        p[1] = 7;
        p[7] = 9; // pid 9 (big-endian)
        // a: offset 24, len 3 "hi\0"
        p[8..12].copy_from_slice(&((3u32 << 16) | 24).to_be_bytes());
        // b: relative to 16 -> offset 27 "yo\0", len 3
        p[12..16].copy_from_slice(&((3u32 << 16) | 11).to_be_bytes());
        p[16..18].copy_from_slice(&(-2i16).to_be_bytes());
        p[18..21].copy_from_slice(b"zz\0");
        p[24..27].copy_from_slice(b"hi\0");
        p[27..30].copy_from_slice(b"yo\0");
        let r = fm.record(&p).unwrap();
        assert_eq!(fm.pid(&p), Some(9));
        assert_eq!(r.string("a"), Some("hi"));
        assert_eq!(r.string("b"), Some("yo"));
        assert_eq!(r.int("s", 2), Some(-2));
        assert_eq!(r.string("tail"), Some("zz"));
        // Out-of-range locations are None, not a panic.
        p[8..12].copy_from_slice(&((300u32 << 16) | 24).to_be_bytes());
        assert_eq!(fm.record(&p).unwrap().string("a"), None);
    }

    #[test]
    fn header_page_layouts() {
        let hp = b"\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;\n\
            \tfield: local_t commit;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;\n\
            \tfield: char data;\toffset:12;\tsize:4084;\tsigned:0;\n";
        let l = PageLayout::parse(hp, None, Endian::Little).unwrap();
        assert_eq!((l.commit_size, l.data_offset, l.page_size), (4, 12, 4096));
        assert!(PageLayout::parse(b"nothing", None, Endian::Little).is_err());
    }
}
