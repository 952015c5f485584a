//! Helpers shared by the binary reader tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// `samples/real/<kind>` of the workspace.
pub fn samples(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/real").join(kind)
}

/// Runs a peer tool; `None` (after printing `SKIP`) when it is not installed, a panic when it
/// is missing under `CI=true`.
pub fn run_tool(tool: &str, args: &[&str]) -> Option<String> {
    match Command::new(tool).args(args).output() {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => panic!(
            "{tool} {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{tool} is required under CI=true but cannot run: {e}");
            }
            println!("SKIP: {tool} is not installed ({e})");
            None
        }
    }
}

/// The conversion letter each `REC->field` gets in a print fmt (`x` for hex, `d`/`u`/...),
/// which is how libtraceevent renders raw fields.
pub fn print_fmt_conversions(print_fmt: &str) -> Vec<(String, char)> {
    let Some(rest) = print_fmt.trim().strip_prefix('"') else { return Vec::new() };
    let Some(end) = rest.find("\", ").or_else(|| rest.rfind('"')) else { return Vec::new() };
    let fmt = &rest[..end];
    let args = &rest[end + 1..];
    let mut convs = Vec::new();
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            i += 1;
            if i < b.len() && b[i] == b'%' {
                i += 1;
                continue;
            }
            while i < b.len() && !b[i].is_ascii_alphabetic() {
                i += 1;
            }
            while i < b.len() && matches!(b[i], b'l' | b'h' | b'z' | b'j' | b't') {
                i += 1;
            }
            if i < b.len() {
                convs.push(b[i] as char);
            }
        }
        i += 1;
    }
    // Top-level comma split of the args.
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    let mut in_str = false;
    for c in args.chars() {
        match c {
            '"' => in_str = !in_str,
            '(' | '{' if !in_str => depth += 1,
            ')' | '}' if !in_str => depth -= 1,
            ',' if depth == 0 && !in_str => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let parts: Vec<String> =
        parts.into_iter().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect();
    let mut out = Vec::new();
    for (conv, arg) in convs.iter().zip(parts.iter()) {
        if let Some(name) = arg.strip_prefix("REC->")
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            out.push((name.to_owned(), *conv));
        }
    }
    out
}

/// The fields a print fmt passes through a bare integer cast, `(u8)REC->e`, with the cast's
/// width in bytes: libtraceevent's raw rendering (`trace-cmd report -R`) prints such a field
/// cast (`e=129` for `0x300000000008081`).
pub fn print_fmt_casts(print_fmt: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for (cast, size) in [("(u8)REC->", 1), ("(u16)REC->", 2), ("(u32)REC->", 4)] {
        let mut rest = print_fmt;
        while let Some(at) = rest.find(cast) {
            rest = &rest[at + cast.len()..];
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            out.push((name, size));
        }
    }
    out
}

/// True when a rendered number `token` denotes `value` (hex when `0x`-prefixed or when the
/// print fmt prints the field with `%x`, else decimal, signed or not).
pub fn number_matches(token: &str, value: u64, signed_value: i64, hex: Option<bool>) -> bool {
    let t = token.trim();
    if let Some(h) = t.strip_prefix("0x") {
        return u64::from_str_radix(h, 16) == Ok(value);
    }
    let dec = t.parse::<u64>() == Ok(value) || t.parse::<i64>() == Ok(signed_value);
    let hexv = u64::from_str_radix(t, 16) == Ok(value);
    match hex {
        Some(true) => hexv,
        Some(false) => dec,
        None => dec || hexv,
    }
}
