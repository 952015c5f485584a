//! Reading the fields a typed tracepoint cannot do without: a missing or ill-typed one is a
//! [`DecodeError`] naming the event and the field, never a zero.

use crate::event::DecodeError;
use crate::fields::FieldLookup;

/// The fields of one event, with the event's name for errors.
pub(crate) struct Required<'f, F: FieldLookup> {
    pub(crate) f: &'f F,
    pub(crate) event: &'static str,
}

impl<F: FieldLookup> Required<'_, F> {
    fn missing(&self, field: &'static str) -> DecodeError {
        DecodeError { event: self.event, field }
    }

    /// An unsigned field.
    pub(crate) fn u64(&self, field: &'static str) -> Result<u64, DecodeError> {
        self.f.uint(field).ok_or_else(|| self.missing(field))
    }

    /// An unsigned field that fits 32 bits.
    pub(crate) fn u32(&self, field: &'static str) -> Result<u32, DecodeError> {
        self.f.u32(field).ok_or_else(|| self.missing(field))
    }

    /// An unsigned field that fits 8 bits.
    pub(crate) fn u8(&self, field: &'static str) -> Result<u8, DecodeError> {
        self.f.uint(field).and_then(|v| u8::try_from(v).ok()).ok_or_else(|| self.missing(field))
    }

    /// A signed 32-bit field (`int`).
    pub(crate) fn i32(&self, field: &'static str) -> Result<i32, DecodeError> {
        self.f.int(field, 4).and_then(|v| i32::try_from(v).ok()).ok_or_else(|| self.missing(field))
    }

    /// A boolean field (any non-zero value is true).
    pub(crate) fn flag(&self, field: &'static str) -> Result<bool, DecodeError> {
        self.f.flag(field).ok_or_else(|| self.missing(field))
    }

    /// An optional signed 32-bit field.
    pub(crate) fn opt_i32(&self, field: &'static str) -> Option<i32> {
        self.f.int(field, 4).and_then(|v| i32::try_from(v).ok())
    }
}
