//! **ept_violation_permitted_access** — blind bug x1: an EPT violation KVM reflects to L1 names
//! an access its own qualification reports as permitted.
//!
//! **KVM behaviour.** `0780516a18f8` "KVM: nVMX: fix EPT permissions as reported in exit
//! qualification" (Paolo Bonzini, 4.14). When L0's walk of L1's EPT12 for L2 fails, KVM
//! synthesizes the EPT violation L1 sees (`nested_ept_inject_page_fault`); its qualification
//! says which access faulted (bits 2:0: read, write, fetch) and what EPT12 allows for the
//! guest-physical address (bits 5:3: R, W, X, the AND over every level; SDM table 28-7).
//! Before the fix the walker ANDed the upper levels' permissions, kept in KVM's ACC_* order
//! (exec, write, user standing for read), with the raw bits of the last entry (read, write,
//! exec): when an upper level lacked R or X those two came out swapped. An upper level with
//! R|W over an RWX leaf gave 0b110 (W, X) for a fetch: the fetch "permitted".
//!
//! **Invariant.** An EPT violation happens because some access in bits 2:0 is not allowed by
//! the permissions in bits 5:3 (read needs R, write W, fetch X). A reflected qualification in
//! which every named access is permitted reports the wrong permissions.
//!
//! **Sequence matched:**
//! ```text
//! kvm_exit EPT_VIOLATION (L2) → kvm_nested_vmexit
//! kvm_nested_vmexit_inject EPT_VIOLATION ext_inf1 Q, Q[2:0] ≠ 0 and Q[2:0] ⊆ Q[5:3] → anomaly
//! ```
//! Every VMX `kvm_nested_vmexit_inject` of an EPT violation with its qualification is checked.
//! Mode-based execute control would change bit 5's meaning, but KVM does not offer it to L1.

use vmxray_events::ExitInfo;
use vmxray_events::codes::{ExitCode, VmxBasicReason};

use super::{Ctx, hex};
use crate::anomaly::{RuleId, Severity};

const RULE: RuleId = RuleId::EptViolationPermittedAccess;

/// Bits 2:0 of an EPT-violation qualification: the access (read, write, fetch).
const ACCESS_MASK: u64 = 0b111;
/// Bits 5:3: what EPT allows (R, W, X), in the same order as the access bits.
const PERMISSION_SHIFT: u32 = 3;

/// `read,fetch` for the access bits `bits` (bit 0 read, bit 1 write, bit 2 fetch).
fn accesses(bits: u64) -> String {
    let names: Vec<&str> = [(1, "read"), (2, "write"), (4, "fetch")]
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect();
    names.join(",")
}

/// `R W -` for the permission bits `bits` (bit 0 R, bit 1 W, bit 2 X).
fn permissions(bits: u64) -> String {
    let flag = |bit: u64, c: &'static str| if bits & bit != 0 { c } else { "-" };
    format!("{}{}{}", flag(1, "R"), flag(2, "W"), flag(4, "X"))
}

pub(crate) fn on_inject(ctx: &mut Ctx<'_>, info: &ExitInfo) {
    let ExitCode::Vmx(reason) = info.reason() else { return };
    if reason.failed_vmentry() || reason.basic() != VmxBasicReason::EPT_VIOLATION {
        return;
    }
    let Some(qual) = info.info1() else { return };
    ctx.checked(RULE);
    let access = qual & ACCESS_MASK;
    let allowed = (qual >> PERMISSION_SHIFT) & ACCESS_MASK;
    if access == 0 || access & !allowed != 0 {
        return;
    }
    ctx.report(RULE, Severity::Error, &[], || {
        format!(
            "L1 is given an EPT violation for a {} access whose qualification {} reports the guest-physical address as {} (bits 5:3), i.e. the access as permitted: the permissions of EPT12's levels were combined in the wrong bit order (fixed by 0780516a18f8)",
            accesses(access),
            hex(qual),
            permissions(allowed)
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accesses_and_permissions() {
        assert_eq!(accesses(0b101), "read,fetch");
        assert_eq!(permissions(0b110), "-WX");
        assert_eq!(permissions(0b011), "RW-");
    }
}
