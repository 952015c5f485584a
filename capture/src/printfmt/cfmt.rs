//! The format string's pieces and the C `printf` conversions they print with, as libtraceevent
//! splits the string (`parse_args`) and glibc prints each piece.
//!
//! libtraceevent passes each conversion's text to the C library's `printf`, after reading
//! only the characters it knows: flags `-`, `0` and `#`, a width and a precision (digits or one
//! `*` taking an argument), the length letters `h l L z Z`, and the conversions
//! `d i u x X o s p`. Any other character (`%c`, `%+d`, `% d`) ends the conversion there and
//! prints as `>c<` — what libtraceevent does, not what the kernel does — without taking an
//! argument.

use std::fmt::Write as _;

use super::parse::PrintFmtError;

/// A width or precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Count {
    Fixed(usize),
    /// `*`: from the argument before the converted one.
    Star,
}

/// What a conversion prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conv {
    /// `d`/`i` (signed) and `u x X o` (unsigned), of `bits` bits.
    Int { conv: u8, bits: u32 },
    /// `s`.
    Str,
    /// `p`, with libtraceevent's extension letter (`S`, `s`, `F`, `f`, `M`, `I`, `U`, `h`...).
    Ptr { ext: Option<u8> },
}

/// One conversion's flags, width and precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    pub left: bool,
    pub zero: bool,
    pub alt: bool,
    pub width: Option<Count>,
    pub precision: Option<Count>,
    pub conv: Conv,
}

/// A piece of the format string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Literal text, escapes (`\n`, `\t`, `\r`, `\\`, `\x` → `x`) and `%%` resolved.
    Text(String),
    /// A conversion of argument `arg`, with `star` the argument giving its `*`.
    Conv { spec: Spec, arg: usize, star: Option<usize> },
}

/// Splits the format string (as written between the quotes) into pieces, matching
/// conversions to the `nargs` arguments in order.
pub(crate) fn pieces(format: &str, nargs: usize) -> Result<Vec<Piece>, PrintFmtError> {
    let b = format.as_bytes();
    let mut out: Vec<Piece> = Vec::new();
    let mut text: Vec<u8> = Vec::new();
    let mut next_arg = 0usize;
    let mut conv_index = 0usize;
    let mut i = 0;
    let flush = |text: &mut Vec<u8>, out: &mut Vec<Piece>| {
        if !text.is_empty() {
            out.push(Piece::Text(String::from_utf8_lossy(text).into_owned()));
            text.clear();
        }
    };
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let Some(&c) = b.get(i + 1) else {
                    text.push(b'\\');
                    break;
                };
                text.push(match c {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    other => other,
                });
                i += 2;
            }
            b'%' if b.get(i + 1) == Some(&b'%') => {
                text.push(b'%');
                i += 2;
            }
            b'%' => {
                flush(&mut text, &mut out);
                let (piece, used) = conversion(&b[i..], &mut next_arg, nargs, conv_index)?;
                conv_index += 1;
                if let Some(p) = piece {
                    out.push(p);
                }
                i += used;
            }
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    flush(&mut text, &mut out);
    Ok(out)
}

/// One conversion starting at `%`: the piece (if any) and the bytes it spans.
fn conversion(
    b: &[u8],
    next_arg: &mut usize,
    nargs: usize,
    index: usize,
) -> Result<(Option<Piece>, usize), PrintFmtError> {
    let missing = PrintFmtError::MissingArgument { index };
    let (mut left, mut zero, mut alt) = (false, false, false);
    let mut width: Option<Count> = None;
    let mut precision: Option<Count> = None;
    let mut in_precision = false;
    let mut ls: i32 = 0;
    let mut star: Option<usize> = None;
    let take_arg = |next_arg: &mut usize| -> Result<usize, PrintFmtError> {
        if *next_arg >= nargs {
            return Err(missing.clone());
        }
        *next_arg += 1;
        Ok(*next_arg - 1)
    };
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        match c {
            b'#' => alt = true,
            b'-' => left = true,
            b'h' => ls -= 1,
            b'l' => ls += 1,
            b'L' => ls = 2,
            b'z' | b'Z' => ls = 1,
            b'.' => {
                in_precision = true;
                precision = Some(Count::Fixed(0));
            }
            b'0'..=b'9' => {
                let d = usize::from(c - b'0');
                let slot = if in_precision { &mut precision } else { &mut width };
                match slot {
                    Some(Count::Fixed(n)) => *n = n.saturating_mul(10).saturating_add(d),
                    Some(Count::Star) => {}
                    None if c == b'0' && !in_precision => zero = true,
                    None => *slot = Some(Count::Fixed(d)),
                }
            }
            b'*' => {
                if star.is_some() {
                    return Err(PrintFmtError::MissingArgument { index });
                }
                star = Some(take_arg(next_arg)?);
                if in_precision {
                    precision = Some(Count::Star);
                } else {
                    width = Some(Count::Star);
                }
            }
            b'p' => {
                let arg = take_arg(next_arg)?;
                let ext = pointer_ext(&b[i + 1..]);
                let ext_len = ext.map_or(0, |(_, n)| n);
                let spec = Spec {
                    left,
                    zero,
                    alt,
                    width,
                    precision,
                    conv: Conv::Ptr { ext: ext.map(|(c, _)| c) },
                };
                return Ok((Some(Piece::Conv { spec, arg, star }), i + 1 + ext_len));
            }
            b'd' | b'i' | b'u' | b'x' | b'X' | b'o' => {
                let arg = take_arg(next_arg)?;
                let bits = match ls {
                    -2 => 8,
                    -1 => 16,
                    0 => 32,
                    1 | 2 => 64,
                    _ => return Err(PrintFmtError::MissingArgument { index }),
                };
                let spec =
                    Spec { left, zero, alt, width, precision, conv: Conv::Int { conv: c, bits } };
                return Ok((Some(Piece::Conv { spec, arg, star }), i + 1));
            }
            b's' => {
                let arg = take_arg(next_arg)?;
                let spec = Spec { left, zero, alt, width, precision, conv: Conv::Str };
                return Ok((Some(Piece::Conv { spec, arg, star }), i + 1));
            }
            other => {
                // libtraceevent prints an unknown conversion character between `>` and `<`.
                let mut text = String::from(">");
                text.push(char::from(other));
                text.push('<');
                if !other.is_ascii() {
                    // Keep the rest of a multi-byte character as text.
                    let ch = std::str::from_utf8(&b[i..])
                        .ok()
                        .and_then(|s| s.chars().next())
                        .map_or(1, char::len_utf8);
                    let lossy = String::from_utf8_lossy(&b[i..i + ch]).into_owned();
                    return Ok((Some(Piece::Text(format!(">{lossy}<"))), i + ch));
                }
                return Ok((Some(Piece::Text(text)), i + 1));
            }
        }
        i += 1;
    }
    // A `%` at the very end prints nothing.
    Ok((None, i))
}

/// The extension letters after `%p` libtraceevent consumes (`parse_arg_format_pointer`):
/// the letter and how many characters it spans.
fn pointer_ext(b: &[u8]) -> Option<(u8, usize)> {
    let c = *b.first()?;
    let at = |k: usize| b.get(k).copied().unwrap_or(0);
    let n = match c {
        b'F' | b'S' | b'f' | b's' => 1,
        b'M' | b'm' => 1 + usize::from(matches!(at(1), b'R' | b'F')),
        b'I' | b'i' => {
            let mut n = 1;
            let mut index = 2;
            match at(1) {
                b'S' => {
                    while matches!(at(index), b'p' | b'f' | b's') {
                        n += 1;
                        index += 1;
                    }
                    if matches!(at(index), b'h' | b'n' | b'l' | b'b') {
                        n += 1;
                        index += 1;
                    }
                    n += usize::from(at(index) == b'c') + 1;
                }
                b'4' => {
                    if matches!(at(index), b'h' | b'n' | b'l' | b'b') {
                        n += 1;
                    }
                    n += 1;
                }
                b'6' => n += usize::from(at(index) == b'c') + 1,
                _ => {}
            }
            n
        }
        b'U' => 1 + usize::from(matches!(at(1), b'L' | b'l' | b'B' | b'b')),
        b'h' => 1 + usize::from(matches!(at(1), b'C' | b'D' | b'N')),
        _ => return None,
    };
    Some((c, n))
}

/// Resolves a width or precision (a negative `*` width means left-justified).
fn resolve(count: Option<Count>, star: Option<i64>) -> (Option<usize>, bool) {
    match count {
        None => (None, false),
        Some(Count::Fixed(n)) => (Some(n), false),
        Some(Count::Star) => match star {
            Some(v) if v < 0 => (usize::try_from(v.unsigned_abs()).ok(), true),
            Some(v) => (usize::try_from(v).ok(), false),
            None => (None, false),
        },
    }
}

/// Caps a requested width or precision: a hostile format must not make us allocate gigabytes.
const MAX_PAD: usize = 4096;

fn pad(out: &mut String, n: usize, c: char) {
    out.extend(std::iter::repeat_n(c, n.min(MAX_PAD)));
}

/// Prints an integer as glibc prints `spec` (flags, width, precision) of the value taken at
/// the conversion's size (`(int)val` for `%d`, `(long)val` for `%ld`, ...).
pub(crate) fn write_int(
    out: &mut String,
    spec: &Spec,
    conv: u8,
    bits: u32,
    val: u64,
    star: Option<i64>,
) {
    let mask = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    let raw = val & mask;
    if spec.width.is_none() && spec.precision.is_none() && !spec.alt {
        // The common `%d`/`%x`/`%llx`: no padding, no prefix, no allocation.
        let _ = match conv {
            b'd' | b'i' => {
                let shift = 64 - bits.clamp(1, 64);
                write!(out, "{}", (raw << shift).cast_signed() >> shift)
            }
            b'u' => write!(out, "{raw}"),
            b'x' => write!(out, "{raw:x}"),
            b'X' => write!(out, "{raw:X}"),
            _ => write!(out, "{raw:o}"),
        };
        return;
    }
    let (width, star_left) = resolve(spec.width, star);
    let precision = match spec.precision {
        Some(Count::Star) => match star {
            Some(v) if v >= 0 => usize::try_from(v).ok(),
            _ => None,
        },
        Some(Count::Fixed(n)) => Some(n),
        None => None,
    };
    let left = spec.left || star_left;
    let mut prefix = String::new();
    let digits = match conv {
        b'd' | b'i' => {
            let shift = 64 - bits.clamp(1, 64);
            let signed = (raw << shift).cast_signed() >> shift;
            if signed < 0 {
                prefix.push('-');
            }
            signed.unsigned_abs().to_string()
        }
        b'u' => raw.to_string(),
        b'x' => format!("{raw:x}"),
        b'X' => format!("{raw:X}"),
        _ => format!("{raw:o}"),
    };
    let mut digits = if precision == Some(0) && raw == 0 { String::new() } else { digits };
    if let Some(p) = precision {
        let p = p.min(MAX_PAD);
        if digits.len() < p {
            digits.insert_str(0, &"0".repeat(p - digits.len()));
        }
    }
    if spec.alt {
        match conv {
            b'x' if raw != 0 => prefix.push_str("0x"),
            b'X' if raw != 0 => prefix.push_str("0X"),
            b'o' if !digits.starts_with('0') => digits.insert(0, '0'),
            _ => {}
        }
    }
    let len = prefix.len() + digits.len();
    let fill = width.unwrap_or(0).saturating_sub(len);
    if left {
        out.push_str(&prefix);
        out.push_str(&digits);
        pad(out, fill, ' ');
    } else if spec.zero && precision.is_none() {
        out.push_str(&prefix);
        pad(out, fill, '0');
        out.push_str(&digits);
    } else {
        pad(out, fill, ' ');
        out.push_str(&prefix);
        out.push_str(&digits);
    }
}

/// Prints a C string (the bytes up to the first NUL) as glibc prints `%s` with `spec`.
pub(crate) fn write_str(out: &mut String, spec: &Spec, bytes: &[u8], star: Option<i64>) {
    let bytes = match memchr::memchr(0, bytes) {
        Some(n) => &bytes[..n],
        None => bytes,
    };
    let (width, star_left) = resolve(spec.width, star);
    let precision = match spec.precision {
        Some(Count::Star) => match star {
            Some(v) if v >= 0 => usize::try_from(v).ok(),
            _ => None,
        },
        Some(Count::Fixed(n)) => Some(n),
        None => None,
    };
    let shown = match precision {
        Some(p) if p < bytes.len() => &bytes[..p],
        _ => bytes,
    };
    let fill = width.unwrap_or(0).saturating_sub(shown.len());
    let text = String::from_utf8_lossy(shown);
    if spec.left || star_left {
        out.push_str(&text);
        pad(out, fill, ' ');
    } else {
        pad(out, fill, ' ');
        out.push_str(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_of(f: &str) -> Spec {
        match pieces(f, 2).unwrap().into_iter().next() {
            Some(Piece::Conv { spec, .. }) => spec,
            other => panic!("{other:?}"),
        }
    }

    fn int(f: &str, v: u64) -> String {
        let spec = spec_of(f);
        let Conv::Int { conv, bits } = spec.conv else { panic!() };
        let mut s = String::new();
        write_int(&mut s, &spec, conv, bits, v, None);
        s
    }

    #[test]
    fn integers_print_as_glibc_does() {
        // Each expectation is glibc's output for the same conversion (checked with a C program).
        assert_eq!(int("%05d", (-42i64).cast_unsigned()), "-0042");
        assert_eq!(int("%-05d", 7), "7    ");
        assert_eq!(int("%#x", 0), "0");
        assert_eq!(int("%#x", 255), "0xff");
        assert_eq!(int("%#o", 0), "0");
        assert_eq!(int("%.0d", 0), "");
        assert_eq!(int("%5.3d", (-4i64).cast_unsigned()), " -004");
        assert_eq!(int("%-#8x", 255), "0xff    ");
        assert_eq!(int("%08.3x", 5), "     005");
        assert_eq!(int("%hhd", 200), "-56");
        assert_eq!(int("%hx", u64::MAX), "ffff");
        assert_eq!(int("%d", 0xffff_ffff), "-1");
        assert_eq!(int("%ld", 0xffff_ffff), "4294967295");
        assert_eq!(int("%llx", u64::MAX), "ffffffffffffffff");
    }

    #[test]
    fn strings_and_stars() {
        let mut s = String::new();
        write_str(&mut s, &spec_of("%05s"), b"ab", None);
        write_str(&mut s, &spec_of("%.2s"), b"abc\0def", None);
        write_str(&mut s, &spec_of("%*s"), b"a", Some(-4));
        write_str(&mut s, &spec_of("%.*s"), b"abc", Some(-1));
        assert_eq!(s, "   ababa   abc");
    }

    #[test]
    fn the_string_splits_as_libtraceevent_splits_it() {
        let p = pieces(r"a\tb%%c %c %+d %lu%", 2).unwrap();
        assert_eq!(p[0], Piece::Text("a\tb%c ".into()));
        assert_eq!(p[1], Piece::Text(">c<".into()));
        assert_eq!(p[3], Piece::Text(">+<".into()));
        assert!(matches!(p[5], Piece::Conv { arg: 0, .. }));
        assert!(matches!(pieces("%d %d", 1), Err(PrintFmtError::MissingArgument { index: 1 })));
        let p = pieces("%pS+%pI4h%pa", 3).unwrap();
        assert!(matches!(
            p[0],
            Piece::Conv { spec: Spec { conv: Conv::Ptr { ext: Some(b'S') }, .. }, .. }
        ));
        assert_eq!(p[1], Piece::Text("+".into()));
        assert!(matches!(
            p[3],
            Piece::Conv { spec: Spec { conv: Conv::Ptr { ext: None }, .. }, arg: 2, .. }
        ));
        assert_eq!(p[4], Piece::Text("a".into()));
    }
}
