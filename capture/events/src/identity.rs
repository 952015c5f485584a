//! Which VM a thread belongs to, as `vmxray record` writes it into every trace it makes.
//!
//! A host runs many VMs and every one has a vCPU 0, so a vCPU is (VM, `vcpu_id`), and a VM is
//! the VMM process (tgid). trace.dat records carry no tgid, so the recorder writes one
//! `trace_marker` line per VMM thread into its own instance when it starts (and again for
//! threads that appear later):
//!
//! ```text
//! vmxray_identity: pid=2242 tgid=2231 vcpu=0 comm="CPU 0/KVM" vm="guest0"
//! ```
//!
//! - `pid`, `tgid`: decimal, required;
//! - `vcpu`: the vCPU the thread runs, when the recorder knows it (`KVM_RUN` threads are found
//!   by their `anon_inode:kvm-vcpu:N` file descriptors and their names);
//! - `comm`, `vm`: quoted strings (`\"` and `\\` escaped), optional; `vm` is the VM's name
//!   (QEMU's `-name guest=…`), else absent.
//!
//! Every reader types such a print event as [`crate::EventKind::Identity`]; the attribution
//! ([`crate::Attribution`]) learns the thread's process and the VM's name from it.

use serde::Serialize;

/// The marker that starts the line.
pub const MARKER: &str = "vmxray_identity:";

/// One thread's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ThreadIdentity {
    /// The thread.
    pub pid: i32,
    /// Its process: the VM.
    pub tgid: i32,
    /// The vCPU it runs, when known.
    pub vcpu: Option<u32>,
    /// Its comm.
    pub comm: Option<Box<str>>,
    /// The VM's name.
    pub vm: Option<Box<str>>,
}

impl ThreadIdentity {
    /// The marker line (without a newline).
    pub fn to_line(&self) -> String {
        let mut line = format!("{MARKER} pid={} tgid={}", self.pid, self.tgid);
        if let Some(v) = self.vcpu {
            line.push_str(&format!(" vcpu={v}"));
        }
        for (key, value) in [("comm", &self.comm), ("vm", &self.vm)] {
            if let Some(value) = value {
                line.push_str(&format!(" {key}=\""));
                for c in value.chars() {
                    if matches!(c, '"' | '\\') {
                        line.push('\\');
                    }
                    line.push(c);
                }
                line.push('"');
            }
        }
        line
    }

    /// Parses a marker line (leading text before the marker, such as trace-cmd's
    /// `tracing_mark_write: `, and a trailing newline are allowed); `None` when the text is not
    /// one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = &text[text.find(MARKER)? + MARKER.len()..];
        let mut out = Self::default();
        let (mut pid, mut tgid) = (None, None);
        let mut s = rest.trim_end_matches(['\n', '\0']).trim_start();
        while !s.is_empty() {
            let (key, after) = s.split_once('=')?;
            let (value, next) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let mut value = String::new();
                    let mut chars = quoted.char_indices();
                    let end = loop {
                        match chars.next()? {
                            (_, '\\') => value.push(chars.next()?.1),
                            (at, '"') => break at,
                            (_, c) => value.push(c),
                        }
                    };
                    (value, &quoted[end + 1..])
                }
                None => {
                    let end = after.find(' ').unwrap_or(after.len());
                    (after[..end].to_owned(), &after[end..])
                }
            };
            match key.trim() {
                "pid" => pid = value.parse().ok(),
                "tgid" => tgid = value.parse().ok(),
                "vcpu" => out.vcpu = value.parse().ok(),
                "comm" => out.comm = Some(value.into()),
                "vm" => out.vm = Some(value.into()),
                _ => {}
            }
            s = next.trim_start();
        }
        out.pid = pid?;
        out.tgid = tgid?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_foreign_text_is_not_an_identity() {
        let id = ThreadIdentity {
            pid: 2242,
            tgid: 2231,
            vcpu: Some(1),
            comm: Some("CPU 1/KVM".into()),
            vm: Some("gu\"est \\0".into()),
        };
        let line = id.to_line();
        assert_eq!(
            line,
            r#"vmxray_identity: pid=2242 tgid=2231 vcpu=1 comm="CPU 1/KVM" vm="gu\"est \\0""#
        );
        assert_eq!(ThreadIdentity::parse(&line), Some(id.clone()));
        assert_eq!(ThreadIdentity::parse(&format!("tracing_mark_write: {line}\n")), Some(id));
        assert_eq!(ThreadIdentity::parse("vmxray_identity: pid=1"), None);
        assert_eq!(ThreadIdentity::parse("hello world"), None);
        assert_eq!(
            ThreadIdentity::parse("vmxray_identity: pid=1 tgid=2 comm=\"unterminated"),
            None
        );
    }
}
