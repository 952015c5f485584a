//! The MMU fast-path and SPTE tracepoints of `kvmmmu` (`arch/x86/kvm/mmu/mmutrace.h`),
//! typed: `fast_page_fault`, `kvm_tdp_mmu_spte_changed`, `kvm_mmu_spte_requested` and
//! `kvm_mmu_set_spte`.
//!
//! Layouts across kernel generations (torvalds/linux at several versions, and the format
//! files of 6.1 and 6.12 in `samples/real/vmx/*.dat` and of 6.18 in
//! `samples/real/raw/tracefs/events`):
//!
//! | tracepoint | fields | generations |
//! |---|---|---|
//! | `fast_page_fault` | `vcpu_id`, `cr2_or_gpa`, `error_code`, `sptep`, `old_spte`, `new_spte`, `ret` | 4.x: `gva` and `retry` (no `ret`); 5.x: `cr2_or_gpa`, `ret`; `error_code` u32, then u64 (6.12 has u64); the print's flag table gained `PK`, `SS`, `SGX` |
//! | `kvm_tdp_mmu_spte_changed` | `gfn`, `old_spte`, `new_spte`, `level`, `as_id` | 5.10+, stable |
//! | `kvm_mmu_spte_requested` | `gfn`, `pfn`, `level` | stable |
//! | `kvm_mmu_set_spte` | `gfn`, `spte`, `sptep`, `level`, `r`, `x`, `u` | `u` was a bool, then a signed char that is -1 when the MMU has no user bit (EPT) |
//!
//! `fast_page_fault.ret` is a `RET_PF_*` value whose numbering changed twice: `RETRY` 0 …
//! `FIXED` 3, `SPURIOUS` 4; then `CONTINUE` 0 was put first (`FIXED` 4, `SPURIOUS` 5, as in
//! 6.1); then `WRITE_PROTECTED` was inserted before `INVALID` (`FIXED` 5, `SPURIOUS` 6, as
//! in 6.12). The typed event holds the value in the newest numbering, [`PageFaultRet`]; a
//! binary reader knows the format's numbering from its print fmt (`REC->ret == 6, REC->ret
//! == 5`) and converts ([`RetNumbering`]). The kernel's text shows only `spurious %d fixed %d`,
//! so a text rendering gives `Some` only for those two outcomes. A raw-field text rendering
//! (`trace-cmd report -R`) prints the traced number, which is read in the newest numbering:
//! the text does not say which kernel wrote it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::codes::code_table;
use crate::event::{DecodeError, KnownEvent};
use crate::fields::FieldLookup;
use crate::kernel_fields::{Field, Radix, Sink, Val, dec, flag, hex};
use crate::qualification::PfErrorCode;
use crate::required::Required;

code_table! {
    /// A `RET_PF_*` value in the 6.12+ numbering (`arch/x86/kvm/mmu/mmu_internal.h`).
    PageFaultRet(i32) {
        CONTINUE = 0 => "continue",
        RETRY = 1 => "retry",
        EMULATE = 2 => "emulate",
        WRITE_PROTECTED = 3 => "write-protected",
        INVALID = 4 => "invalid",
        FIXED = 5 => "fixed",
        SPURIOUS = 6 => "spurious",
    }
}

impl fmt::Display for PageFaultRet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "UNKNOWN({})", self.0),
        }
    }
}

impl fmt::Debug for PageFaultRet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageFaultRet({self} = {})", self.0)
    }
}

/// How a kernel numbered `RET_PF_*` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RetNumbering {
    /// `RETRY` 0, `EMULATE`, `INVALID`, `FIXED` 3, `SPURIOUS` 4.
    RetryFirst,
    /// `CONTINUE` 0, `RETRY`, `EMULATE`, `INVALID`, `FIXED` 4, `SPURIOUS` 5.
    ContinueFirst,
    /// `CONTINUE` 0, `RETRY`, `EMULATE`, `WRITE_PROTECTED`, `INVALID`, `FIXED` 5,
    /// `SPURIOUS` 6: [`PageFaultRet`]'s own.
    WriteProtected,
}

impl RetNumbering {
    /// The numbering `fast_page_fault`'s print fmt uses: its first comparison of `ret` is
    /// with `RET_PF_SPURIOUS` (a number once `TRACE_DEFINE_ENUM` resolves it, the enum's name
    /// in the kernels from before the numbering changed). `None` when the print does not
    /// compare `ret` (the 4.x layout).
    pub fn of_print_fmt(print_fmt: &str) -> Option<Self> {
        let at = print_fmt.find("REC->ret ==")?;
        let rest = print_fmt[at + "REC->ret ==".len()..].trim_start();
        if rest.starts_with("RET_PF_SPURIOUS") {
            return Some(Self::RetryFirst);
        }
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        match digits.parse::<u32>().ok()? {
            4 => Some(Self::RetryFirst),
            5 => Some(Self::ContinueFirst),
            6 => Some(Self::WriteProtected),
            _ => None,
        }
    }

    /// A traced value in [`PageFaultRet`]'s numbering.
    pub fn normalize(self, raw: i32) -> PageFaultRet {
        PageFaultRet(match self {
            Self::RetryFirst if raw >= 2 => raw.saturating_add(2),
            Self::RetryFirst if raw >= 0 => raw + 1,
            Self::ContinueFirst if raw >= 3 => raw.saturating_add(1),
            Self::RetryFirst | Self::ContinueFirst | Self::WriteProtected => raw,
        })
    }

    /// The value this numbering traces for `ret` (the inverse of [`RetNumbering::normalize`];
    /// `WRITE_PROTECTED` has no older number and maps to the older `INVALID`, as a fault KVM
    /// then left to the slow path).
    pub fn denormalize(self, ret: PageFaultRet) -> i32 {
        let r = ret.0;
        match self {
            Self::RetryFirst if r >= 4 => r - 2,
            Self::RetryFirst if r == 3 => 2,
            Self::RetryFirst if r >= 1 => r - 1,
            Self::ContinueFirst if r >= 4 => r - 1,
            Self::RetryFirst | Self::ContinueFirst | Self::WriteProtected => r,
        }
    }
}

/// `fast_page_fault`: KVM's lockless fix-up of a fault (A/D bits, write protection) without
/// taking the MMU lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FastPageFault {
    /// `vcpu_id`.
    pub vcpu_id: u32,
    /// `cr2_or_gpa` (`gva` in 4.x): the GPA under TDP, the faulting linear address with the
    /// shadow MMU. The kernel prints it as `gva`.
    pub addr: u64,
    /// `error_code`: KVM's `PFERR_*` word.
    pub error_code: PfErrorCode,
    /// `sptep`, from a binary record (the text prints a hashed `%p` that is not the pointer).
    pub sptep: Option<u64>,
    /// `old_spte`.
    pub old_spte: u64,
    /// `new_spte`.
    pub new_spte: u64,
    /// `ret` in the newest numbering; from the kernel's text only `FIXED` or `SPURIOUS` (the
    /// print says neither for the other outcomes), `None` in the 4.x layout.
    pub ret: Option<PageFaultRet>,
}

impl FastPageFault {
    /// The fault was fixed (`fixed 1`).
    pub fn fixed(&self) -> bool {
        self.ret == Some(PageFaultRet::FIXED)
    }

    /// The fault was already fixed when KVM looked (`spurious 1`).
    pub fn spurious(&self) -> bool {
        self.ret == Some(PageFaultRet::SPURIOUS)
    }
}

/// The kvmmmu SPTE events (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "tracepoint", rename_all = "snake_case")]
#[allow(missing_docs)] // The fields are the kernel's, described in the variant docs.
pub enum SpteEvent {
    /// `fast_page_fault` (boxed: the largest payload of the vocabulary).
    FastPageFault(Box<FastPageFault>),
    /// `kvm_tdp_mmu_spte_changed`: a TDP MMU SPTE of address space `as_id` (1: SMM) changed.
    TdpMmuSpteChanged { as_id: u8, gfn: u64, level: u8, old_spte: u64, new_spte: u64 },
    /// `kvm_mmu_spte_requested`: the page-fault handler will map `gfn` to `pfn` at `level`.
    SpteRequested { gfn: u64, pfn: u64, level: u8 },
    /// `kvm_mmu_set_spte`: the shadow MMU installed `spte` at `sptep` (a physical address)
    /// for `gfn`; `readable`/`executable`/`user` as KVM computed them (`user` is `None` when
    /// the MMU has no user bit, i.e. EPT, printed as nothing).
    SetSpte {
        gfn: u64,
        spte: u64,
        sptep: u64,
        level: u8,
        readable: bool,
        executable: bool,
        user: Option<bool>,
    },
}

/// The `(%s%s%s%s)` access string of `kvm_mmu_set_spte` (`rwxu`, `-` for a missing right;
/// the writable bit is the SPTE's bit 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpteAccess {
    /// `r`.
    pub readable: bool,
    /// SPTE bit 1.
    pub writable: bool,
    /// `x`.
    pub executable: bool,
    /// `u`, when the MMU has a user bit.
    pub user: Option<bool>,
}

impl fmt::Display for SpteAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: &'static str| if on { ch } else { "-" };
        write!(
            f,
            "{}{}{}{}",
            c(self.readable, "r"),
            c(self.writable, "w"),
            c(self.executable, "x"),
            self.user.map_or("", |u| c(u, "u"))
        )
    }
}

impl SpteEvent {
    /// The tracepoints of this family, in [`KnownEvent`] order.
    pub const TRACEPOINTS: [KnownEvent; 4] = [
        KnownEvent::FastPageFault,
        KnownEvent::KvmTdpMmuSpteChanged,
        KnownEvent::KvmMmuSpteRequested,
        KnownEvent::KvmMmuSetSpte,
    ];

    /// Decodes `known`, one of [`SpteEvent::TRACEPOINTS`] (the others are refused).
    pub(crate) fn decode(
        known: KnownEvent,
        f: &impl FieldLookup,
    ) -> Result<SpteEvent, DecodeError> {
        let r = Required { f, event: known.name() };
        Ok(match known {
            KnownEvent::FastPageFault => {
                let vcpu_id = r.i32("vcpu_id")?;
                let numbering = f
                    .print_fmt()
                    .and_then(RetNumbering::of_print_fmt)
                    .unwrap_or(RetNumbering::WriteProtected);
                Self::FastPageFault(Box::new(FastPageFault {
                    vcpu_id: u32::try_from(vcpu_id)
                        .map_err(|_| DecodeError { event: r.event, field: "vcpu_id" })?,
                    addr: f
                        .uint("cr2_or_gpa")
                        .or_else(|| f.uint("gva"))
                        .ok_or(DecodeError { event: r.event, field: "cr2_or_gpa" })?,
                    error_code: PfErrorCode(r.u64("error_code")?),
                    sptep: f.uint("sptep"),
                    old_spte: r.u64("old_spte")?,
                    new_spte: r.u64("new_spte")?,
                    ret: r.opt_i32("ret").map(|raw| numbering.normalize(raw)),
                }))
            }
            KnownEvent::KvmTdpMmuSpteChanged => Self::TdpMmuSpteChanged {
                as_id: r.u8("as_id")?,
                gfn: r.u64("gfn")?,
                level: r.u8("level")?,
                old_spte: r.u64("old_spte")?,
                new_spte: r.u64("new_spte")?,
            },
            KnownEvent::KvmMmuSpteRequested => Self::SpteRequested {
                gfn: r.u64("gfn")?,
                pfn: r.u64("pfn")?,
                level: r.u8("level")?,
            },
            KnownEvent::KvmMmuSetSpte => Self::SetSpte {
                gfn: r.u64("gfn")?,
                spte: r.u64("spte")?,
                sptep: r.u64("sptep")?,
                level: r.u8("level")?,
                readable: r.flag("r")?,
                executable: r.flag("x")?,
                // A signed char: -1 when the MMU has no user bit; a bool in older kernels.
                user: f.int("u", 1).filter(|u| *u >= 0).map(|u| u != 0),
            },
            other => return Err(DecodeError { event: other.name(), field: "(not an SPTE event)" }),
        })
    }

    /// The tracepoint this is.
    pub(crate) fn known(&self) -> KnownEvent {
        match self {
            Self::FastPageFault(_) => KnownEvent::FastPageFault,
            Self::TdpMmuSpteChanged { .. } => KnownEvent::KvmTdpMmuSpteChanged,
            Self::SpteRequested { .. } => KnownEvent::KvmMmuSpteRequested,
            Self::SetSpte { .. } => KnownEvent::KvmMmuSetSpte,
        }
    }

    /// The fields under the kernel's names, in the kernel's order (`ret` in the newest
    /// numbering).
    pub(crate) fn kernel_fields<'a>(&'a self, out: &mut Sink<impl FnMut(Field<'a>)>) {
        let int =
            |name: &'static str, v: i64| Field { name, value: Val::I64(v), radix: Radix::Dec };
        match self {
            Self::FastPageFault(p) => {
                out.push(int("vcpu_id", i64::from(p.vcpu_id)));
                out.extend([hex("cr2_or_gpa", p.addr), hex("error_code", p.error_code.0)]);
                out.opt(p.sptep.map(|s| hex("sptep", s)));
                out.extend([hex("old_spte", p.old_spte), hex("new_spte", p.new_spte)]);
                out.opt(p.ret.map(|r| int("ret", i64::from(r.0))));
            }
            Self::TdpMmuSpteChanged { as_id, gfn, level, old_spte, new_spte } => {
                out.extend([
                    hex("gfn", *gfn),
                    hex("old_spte", *old_spte),
                    hex("new_spte", *new_spte),
                ]);
                out.extend([dec("level", u64::from(*level)), dec("as_id", u64::from(*as_id))]);
            }
            Self::SpteRequested { gfn, pfn, level } => {
                out.extend([hex("gfn", *gfn), hex("pfn", *pfn), dec("level", u64::from(*level))]);
            }
            Self::SetSpte { gfn, spte, sptep, level, readable, executable, user } => {
                out.extend([hex("gfn", *gfn), hex("spte", *spte), hex("sptep", *sptep)]);
                out.extend([
                    dec("level", u64::from(*level)),
                    flag("r", *readable),
                    flag("x", *executable),
                ]);
                out.push(int("u", user.map_or(-1, i64::from)));
            }
        }
    }

    /// The vCPU the event carries (`fast_page_fault.vcpu_id`).
    pub(crate) fn vcpu_id(&self) -> Option<u32> {
        match self {
            Self::FastPageFault(p) => Some(p.vcpu_id),
            Self::TdpMmuSpteChanged { .. } | Self::SpteRequested { .. } | Self::SetSpte { .. } => {
                None
            }
        }
    }

    /// The human decodings of [`crate::EventKind::decoded`], in the kernel's wording.
    pub(crate) fn for_each_decoded(&self, f: &mut dyn FnMut(&'static str, &dyn fmt::Display)) {
        match self {
            Self::FastPageFault(p) => {
                f("error_code", &p.error_code.flags());
                if let Some(ret) = p.ret {
                    f("ret", &ret);
                }
            }
            Self::SetSpte { spte, readable, executable, user, .. } => f(
                "access",
                &SpteAccess {
                    readable: *readable,
                    writable: spte & 2 != 0,
                    executable: *executable,
                    user: *user,
                },
            ),
            Self::TdpMmuSpteChanged { .. } | Self::SpteRequested { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ret_numbering_follows_the_print_fmt() {
        // The format files of samples/real/vmx/*-6.1.dat and *-6.12.dat.
        let v6_1 = "\"vcpu %d gva %llx error_code %s sptep %p old %#llx new %llx spurious %d fixed %d\", REC->vcpu_id, REC->cr2_or_gpa, __print_flags(REC->error_code, \"|\", { (1U << 0), \"P\" }), REC->sptep, REC->old_spte, REC->new_spte, REC->ret == 5, REC->ret == 4";
        let v6_12 = v6_1.replace("REC->ret == 5, REC->ret == 4", "REC->ret == 6, REC->ret == 5");
        assert_eq!(RetNumbering::of_print_fmt(v6_1), Some(RetNumbering::ContinueFirst));
        assert_eq!(RetNumbering::of_print_fmt(&v6_12), Some(RetNumbering::WriteProtected));
        assert_eq!(
            RetNumbering::of_print_fmt("REC->ret == RET_PF_SPURIOUS, REC->ret == RET_PF_FIXED"),
            Some(RetNumbering::RetryFirst)
        );
        assert_eq!(RetNumbering::of_print_fmt("__spte_satisfied(REC->old_spte)"), None);
        for n in
            [RetNumbering::RetryFirst, RetNumbering::ContinueFirst, RetNumbering::WriteProtected]
        {
            let (fixed, spurious) = match n {
                RetNumbering::RetryFirst => (3, 4),
                RetNumbering::ContinueFirst => (4, 5),
                RetNumbering::WriteProtected => (5, 6),
            };
            assert_eq!(n.normalize(fixed), PageFaultRet::FIXED, "{n:?}");
            assert_eq!(n.normalize(spurious), PageFaultRet::SPURIOUS, "{n:?}");
            for raw in 0..=spurious {
                assert_eq!(n.denormalize(n.normalize(raw)), raw, "{n:?} {raw}");
            }
        }
        assert_eq!(RetNumbering::RetryFirst.normalize(0), PageFaultRet::RETRY);
        assert_eq!(RetNumbering::RetryFirst.normalize(2), PageFaultRet::INVALID);
        assert_eq!(RetNumbering::ContinueFirst.normalize(3), PageFaultRet::INVALID);
    }

    fn fields(pairs: &[(&str, crate::FieldValue)]) -> crate::Fields {
        let mut f = crate::Fields::new();
        for (n, v) in pairs {
            f.push(*n, v.clone());
        }
        f
    }

    #[test]
    fn older_layouts_decode_into_the_same_variants() {
        use crate::FieldValue::{I64, U64};
        // 4.x fast_page_fault: `gva` and `retry`, no `ret` (mmutrace.h before 5.6).
        let old = fields(&[
            ("vcpu_id", I64(0)),
            ("gva", U64(0x1000)),
            ("error_code", U64(3)),
            ("sptep", U64(0xffff_8880_0000_0000)),
            ("old_spte", U64(0x5)),
            ("new_spte", U64(0x7)),
            ("retry", U64(1)),
        ]);
        let crate::EventKind::Spte(SpteEvent::FastPageFault(p)) =
            crate::EventKind::decode("kvmmmu", "fast_page_fault", &old).unwrap()
        else {
            panic!()
        };
        assert_eq!((p.addr, p.ret, p.error_code.0), (0x1000, None, 3));
        // kvm_mmu_set_spte whose `u` was a bool (before the EPT `-1`).
        let set = fields(&[
            ("gfn", U64(1)),
            ("spte", U64(0x2bd2a21)),
            ("sptep", U64(0x3f5c5008)),
            ("level", U64(1)),
            ("r", U64(1)),
            ("x", U64(1)),
            ("u", U64(1)),
        ]);
        let crate::EventKind::Spte(SpteEvent::SetSpte { user, .. }) =
            crate::EventKind::decode("kvmmmu", "kvm_mmu_set_spte", &set).unwrap()
        else {
            panic!()
        };
        assert_eq!(user, Some(true));
        // A field every layout has is required.
        let err = crate::EventKind::decode(
            "kvmmmu",
            "kvm_mmu_spte_requested",
            &fields(&[("gfn", U64(1))]),
        )
        .unwrap_err();
        assert_eq!(err.field, "pfn");
    }

    #[test]
    fn set_spte_access_string() {
        let a = SpteAccess { readable: true, writable: false, executable: true, user: None };
        assert_eq!(a.to_string(), "r-x");
        let a = SpteAccess { readable: true, writable: true, executable: false, user: Some(true) };
        assert_eq!(a.to_string(), "rw-u");
    }
}
