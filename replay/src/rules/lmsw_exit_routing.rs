//! **lmsw_exit_routing** — blind bug x3, invariant 21: an L2 `lmsw` goes to L1 exactly when it
//! changes a CR0 bit L1 owns.
//!
//! **KVM behaviour.** `e1d39b17e044` "KVM: nVMX: Fix handling of lmsw instruction" (Jan H.
//! Schönherr, 2017). `nested_vmx_exit_handled_cr` decides whether L2's CR-access exit belongs
//! to L1. For LMSW the operand is the qualification's source data (bits 31:16); before the fix
//! KVM took it from the GPR the qualification's bits 11:8 name, as for MOV to CR — 0, so RAX —
//! and an `lmsw` that changes a bit L1 owns was handled by L0 whenever RAX agreed with L1's
//! read shadow (or reflected when RAX, not the source, differed).
//!
//! **Rule** (SDM 25.1.3, as KVM implements it): with vmcs12's CR0 guest/host mask M and read
//! shadow S, an LMSW with source V belongs to L1 iff `M & 0xe & (V ^ S) ≠ 0`, or M bit 0 is
//! set, S bit 0 clear and V bit 0 set.
//!
//! **Sequence matched:**
//! ```text
//! [vmcs12@P CR0_GUEST_HOST_MASK = M, CR0_READ_SHADOW = S]  (VMCS-field records, no VMWRITE
//!                                                           exit since)
//! kvm_exit CR_ACCESS (L2, vmcs12 P) qualification type 3 (LMSW), source V
//! then kvm_nested_vmexit_inject CR_ACCESS (L1 got it) or kvm_entry (L0 handled it);
//! the one the rule does not expect                                     → anomaly
//! ```
//! **Needs M and S.** No tracepoint carries vmcs12's CR0 mask or read shadow: they come only
//! from explicit VMCS-field records (`vmxray replay --fields`, `trace_printk` lines in the
//! format of `vmxray_events::vmcs::record`) written by whoever knows them (an instrumented L1).
//! Without them the rule is "not checkable": an LMSW L0 handles is right whenever L1 does not
//! own the bits it changes, so the exits alone cannot tell.

use vmxray_events::ExitInfo;
use vmxray_events::codes::{CrAccessQual, CrAccessType, ExitCode, VmxBasicReason};
use vmxray_events::vmcs::{FieldEncoding, VmcsRef};

use super::{Ctx, hex};
use crate::anomaly::{EventIndex, RuleId, Severity};
use crate::state::{Level, Mode};

const RULE: RuleId = RuleId::LmswExitRouting;

/// An L2 LMSW exit whose routing the rule decides at the next inject or entry.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    pending: Option<Pending>,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    at: EventIndex,
    source: u64,
    mask: u64,
    shadow: u64,
    l1_owns: bool,
}

/// Whether an LMSW with source `v` exits to an L1 with CR0 mask `m` and read shadow `s`.
fn l1_owns(m: u64, s: u64, v: u64) -> bool {
    m & 0xe & (v ^ s) != 0 || (m & 1 != 0 && s & 1 == 0 && v & 1 != 0)
}

#[inline]
pub(crate) fn on_exit(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    st.pending = None;
    if ctx.vcpu.mode != Mode::L2Run || ctx.vcpu.level() != Some(Level::L2) {
        return;
    }
    let ExitCode::Vmx(reason) = info.reason() else { return };
    if reason.failed_vmentry() || reason.basic() != VmxBasicReason::CR_ACCESS {
        return;
    }
    let Some(qual) = info.info1().map(CrAccessQual) else { return };
    if qual.access() != CrAccessType::Lmsw {
        return;
    }
    let Some(vmptr) = ctx.vcpu.current_vmptr else { return };
    let vmcs = VmcsRef::vmcs12(vmptr);
    let vmwrites = ctx.vcpu.counters.vmwrite;
    let known = |field| {
        ctx.vcpu
            .fields
            .latest(vmcs, field)
            .filter(|s| s.vmwrites == vmwrites && s.mask & 0xf == 0xf)
            .map(|s| s.value)
    };
    let (Some(mask), Some(shadow)) =
        (known(FieldEncoding::CR0_GUEST_HOST_MASK), known(FieldEncoding::CR0_READ_SHADOW))
    else {
        return;
    };
    let source = u64::from(qual.lmsw_source());
    st.pending =
        Some(Pending { at: ctx.at, source, mask, shadow, l1_owns: l1_owns(mask, shadow, source) });
}

pub(crate) fn on_inject(ctx: &mut Ctx<'_>, st: &mut State, info: &ExitInfo) {
    let Some(p) = st.pending.take() else { return };
    let reflected_cr = matches!(info.reason(), ExitCode::Vmx(r)
        if !r.failed_vmentry() && r.basic() == VmxBasicReason::CR_ACCESS);
    if !reflected_cr {
        // Another exit took precedence (e.g. an event during delivery): not this decision.
        return;
    }
    ctx.checked(RULE);
    if !p.l1_owns {
        report(ctx, &p, true);
    }
}

pub(crate) fn on_entry(ctx: &mut Ctx<'_>, st: &mut State) {
    let Some(p) = st.pending.take() else { return };
    ctx.checked(RULE);
    if p.l1_owns {
        report(ctx, &p, false);
    }
}

/// A nested transition or anything else that makes the next entry not L0's handling of the
/// LMSW.
pub(crate) fn disarm(st: &mut State) {
    st.pending = None;
}

fn report(ctx: &mut Ctx<'_>, p: &Pending, reflected: bool) {
    let p = *p;
    ctx.report(RULE, Severity::Error, &[p.at], || {
        let (what, should) = if reflected {
            ("was reflected to L1", "changes no CR0 bit L1 owns")
        } else {
            ("was handled by L0", "changes a CR0 bit L1 owns")
        };
        format!(
            "L2's lmsw (source {}) {what} although it {should} (vmcs12 CR0 guest/host mask {}, read shadow {}): the exit was routed on another operand than the LMSW source, RAX (fixed by e1d39b17e044)",
            hex(p.source),
            hex(p.mask),
            hex(p.shadow)
        )
    });
}

#[cfg(test)]
mod tests {
    use super::l1_owns;

    #[test]
    fn ownership_follows_the_sdm() {
        // L1 owns TS and MP, shadow TS clear: setting TS is L1's, keeping it is not.
        assert!(l1_owns(0xa, 0x31, 0x39));
        assert!(!l1_owns(0xa, 0x31, 0x31));
        // PE can only be set: it matters only when L1 owns it and its shadow is clear.
        assert!(l1_owns(0x1, 0x0, 0x1));
        assert!(!l1_owns(0x1, 0x1, 0x0));
        assert!(!l1_owns(0x0, 0x0, 0xf));
    }
}
