//! Named field values: the common currency between a reader and the typed vocabulary.
//!
//! Every reader, whatever its input, ends up with "event `sys:name` has field `f` = value"
//! (from a format file and payload bytes, from a `trace-cmd report -R` line, from a parsed
//! print-fmt rendering). [`crate::EventKind::decode`] turns that into a typed event, once, for
//! every layout generation; the fields of events it does not type are kept as [`Fields`].

use std::fmt;
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

/// A field name, shared between all events of one format (cheap to clone).
pub type FieldName = Arc<str>;

/// One decoded field value.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum FieldValue {
    /// An unsigned scalar (or a field whose signedness is unknown and whose value is ≥ 0).
    U64(u64),
    /// A signed scalar.
    I64(i64),
    /// A string (`char[]`, `__data_loc char[]`), without its trailing NUL.
    Str(Box<str>),
    /// A byte array (`u8 insn[15]`, `__data_loc u8[]`).
    Bytes(Box<[u8]>),
    /// An array of wider integers.
    Array(Box<[u64]>),
}

impl FieldValue {
    /// The value as an unsigned integer: signed values are reinterpreted (two's complement),
    /// strings and arrays are not integers.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(*v),
            Self::I64(v) => Some(u64::from_ne_bytes(v.to_ne_bytes())),
            Self::Str(_) | Self::Bytes(_) | Self::Array(_) => None,
        }
    }

    /// The value as a signed integer (unsigned values are reinterpreted).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::I64(v) => Some(*v),
            Self::U64(v) => Some(i64::from_ne_bytes(v.to_ne_bytes())),
            Self::Str(_) | Self::Bytes(_) | Self::Array(_) => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            Self::U64(_) | Self::I64(_) | Self::Bytes(_) | Self::Array(_) => None,
        }
    }

    /// The value as bytes: byte arrays, and strings as their UTF-8 bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            Self::Str(s) => Some(s.as_bytes()),
            Self::U64(_) | Self::I64(_) | Self::Array(_) => None,
        }
    }
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::U64(v) => write!(f, "{v}"),
            Self::I64(v) => write!(f, "{v}"),
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Bytes(b) => {
                f.write_str("[")?;
                for (i, byte) in b.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{byte:02x}")?;
                }
                f.write_str("]")
            }
            Self::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Debug for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::U64(v) => s.serialize_u64(*v),
            Self::I64(v) => s.serialize_i64(*v),
            Self::Str(v) => s.serialize_str(v),
            Self::Bytes(b) => s.collect_seq(b.iter()),
            Self::Array(a) => s.collect_seq(a.iter()),
        }
    }
}

/// An ordered list of named field values (the kernel's field order).
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Fields(pub Vec<(FieldName, FieldValue)>);

impl Fields {
    /// An empty list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a field.
    pub fn push(&mut self, name: impl Into<FieldName>, value: FieldValue) {
        self.0.push((name.into(), value));
    }

    /// The value of the first field called `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| v)
    }

    /// Iterates over the fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(n, v)| (&**n, v))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(n, v)| (n, v))).finish()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(&**name, value)?;
        }
        map.end()
    }
}

/// Read access to an event's fields by name, implemented by every reader's field source (a
/// decoded [`Fields`] list, or a format plus payload bytes without materializing a list).
pub trait FieldLookup {
    /// The field's value as an unsigned integer, or `None` when absent or not an integer.
    fn uint(&self, name: &str) -> Option<u64>;
    /// The field's value as a string, or `None` when absent or not a string.
    fn string(&self, name: &str) -> Option<&str>;
    /// The field's value as bytes (byte arrays and strings).
    fn bytes(&self, name: &str) -> Option<&[u8]>;
    /// Every field, materialized (used for events the vocabulary does not type).
    fn to_fields(&self) -> Fields;

    /// True when a kvmmmu `role` word read here has bit 4 in the pre-5.18 sense (8-byte guest
    /// PTEs; see `vmxray_capture::bin::format::EventFormat::role_bit4_inverted`). Text renderings are
    /// normalized while parsed, so only raw records answer true.
    fn role_bit4_inverted(&self) -> bool {
        false
    }

    /// The event's print fmt, when the input is a binary record read with its format file:
    /// a decoder whose field values changed meaning between kernels reads the generation
    /// from it (`fast_page_fault.ret`, see [`crate::spte::RetNumbering`]).
    fn print_fmt(&self) -> Option<&str> {
        None
    }

    /// The field as a signed integer (reinterpreting an unsigned value of the given width).
    #[inline]
    fn int(&self, name: &str, width_bytes: u32) -> Option<i64> {
        let raw = self.uint(name)?;
        Some(sign_extend(raw, width_bytes))
    }

    /// The field as a `u32`, when it is present and fits.
    #[inline]
    fn u32(&self, name: &str) -> Option<u32> {
        self.uint(name).and_then(|v| u32::try_from(v).ok())
    }

    /// The field as a bool (any non-zero value is true).
    #[inline]
    fn flag(&self, name: &str) -> Option<bool> {
        self.uint(name).map(|v| v != 0)
    }
}

/// Sign-extends the low `width_bytes` bytes of `raw`.
pub fn sign_extend(raw: u64, width_bytes: u32) -> i64 {
    let bits = width_bytes.saturating_mul(8).clamp(1, 64);
    let shift = 64 - bits;
    i64::from_ne_bytes((raw << shift).to_ne_bytes()) >> shift
}

impl FieldLookup for Fields {
    fn uint(&self, name: &str) -> Option<u64> {
        self.get(name)?.as_u64()
    }
    fn string(&self, name: &str) -> Option<&str> {
        self.get(name)?.as_str()
    }
    fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.get(name)?.as_bytes()
    }
    fn to_fields(&self) -> Fields {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_extension_by_width() {
        assert_eq!(sign_extend(0xffff_fffc, 4), -4);
        assert_eq!(sign_extend(0x7f, 1), 127);
        assert_eq!(sign_extend(0x80, 1), -128);
        assert_eq!(sign_extend(u64::MAX, 8), -1);
    }

    #[test]
    fn lookup_and_serialize() {
        let mut f = Fields::new();
        f.push("errno", FieldValue::I64(-4));
        f.push("insn", FieldValue::Bytes(vec![0x0f, 0x22, 0xd8].into()));
        assert_eq!(f.int("errno", 4), Some(-4));
        assert_eq!(f.bytes("insn"), Some(&[0x0f, 0x22, 0xd8][..]));
        assert_eq!(serde_json::to_string(&f).unwrap(), r#"{"errno":-4,"insn":[15,34,216]}"#);
    }
}
