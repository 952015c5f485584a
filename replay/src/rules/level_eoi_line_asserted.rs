//! **level_eoi_line_asserted** — a guest EOIs a level-triggered interrupt while its line is
//! still asserted, and KVM sends that EOI to the userspace I/O APIC (`KVM_EXIT_IOAPIC_EOI`, a
//! split irqchip).
//!
//! **KVM behaviour.** A level-triggered interrupt stays asserted until the device is serviced;
//! the EOI that reaches the I/O APIC clears Remote IRR, and an I/O APIC that still sees the line
//! high delivers the interrupt again at once. A guest EOIs *before* servicing the device only
//! when it enabled x2APIC "Suppress EOI Broadcast" (SVR bit 12): the local APIC's EOI then stays
//! local and the guest issues a directed EOI to the I/O APIC once the device is quiet. Windows
//! with Credential Guard (Hyper-V as L1) does this for interrupts it forwards to L2. KVM
//! advertised the feature (the x2APIC version register's bit 24) with a split irqchip without
//! honouring it: every EOI of an I/O APIC vector was forwarded to userspace, whose I/O APIC
//! re-delivered the still-asserted interrupt; the guest never ran the device's handler and hung
//! (kernel bugzilla 220549). Fixed by 6517dfbcc918 "KVM: x86: Add x2APIC "features" to control
//! EOI broadcast suppression" (kvm-x86), which lets userspace decide whether to advertise and
//! honour the feature. With the in-kernel I/O APIC, KVM honours the suppression.
//!
//! **Sequence matched** (the line and its vector are VM-wide; the EOI is the vCPU's):
//! ```text
//! kvm_set_irq gsi G level 1  → kvm_msi_set_irq / kvm_ioapic_set_irq vec V (level)
//! … no kvm_set_irq gsi G level 0 …
//! kvm_eoi vector V (that vCPU) … kvm_userspace_exit KVM_EXIT_IOAPIC_EOI   → anomaly
//! ```
//! A `kvm_entry` between the EOI and the exit ends the sequence (the EOI stayed in the kernel).
//! Reported once per raise of the line: the EOIs of the storm that follows are the same finding.

use vmxray_events::irq::IrqEvent;
use vmxray_events::{Actor, VmId};

use super::Ctx;
use crate::anomaly::{EventIndex, RuleId, Severity};

const RULE: RuleId = RuleId::LevelEoiLineAsserted;

/// The most interrupt lines followed (a VM has a few dozen GSIs in use).
const MAX_LINES: usize = 64;

/// One GSI of one VM.
#[derive(Clone, Copy, Debug)]
struct Line {
    /// The VM, when the event that set the line was attributed to one of its vCPUs.
    vm: Option<VmId>,
    gsi: u32,
    /// Where the line was last raised, while it is asserted.
    raised: Option<EventIndex>,
    /// The vector and trigger mode of its route (the last MSI or I/O APIC delivery).
    vector: Option<u8>,
    level: bool,
}

/// The interrupt lines of every VM (shared by its vCPUs and other threads).
#[derive(Clone, Debug, Default)]
pub(crate) struct Lines {
    lines: Vec<Line>,
    /// The line the last `kvm_set_irq` raised, and by whom: the delivery that follows on the
    /// same thread (`kvm_msi_set_irq`) names its vector.
    routing: Option<(Actor, usize)>,
}

impl Lines {
    /// Lost events or a new capture: nothing is known of any line.
    pub(crate) fn forget(&mut self) {
        *self = Self::default();
    }

    fn find(&self, vm: Option<VmId>, gsi: u32) -> Option<usize> {
        self.lines.iter().position(|l| l.gsi == gsi && l.vm == vm)
    }

    fn line(&mut self, vm: Option<VmId>, gsi: u32) -> usize {
        if let Some(i) = self.find(vm, gsi) {
            return i;
        }
        if self.lines.len() >= MAX_LINES {
            self.lines.remove(0);
            self.routing = None;
        }
        self.lines.push(Line { vm, gsi, raised: None, vector: None, level: false });
        self.lines.len() - 1
    }
}

/// A vCPU's EOI of an asserted level-triggered line, awaiting where it goes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct State {
    eoi: Option<Eoi>,
    /// The raise last reported: the EOIs of the storm that follows it are the same finding.
    reported: Option<EventIndex>,
}

#[derive(Clone, Copy, Debug)]
struct Eoi {
    at: EventIndex,
    vector: u8,
    gsi: u32,
    raised: EventIndex,
}

fn vm_of(actor: Actor) -> Option<VmId> {
    match actor {
        Actor::Vcpu(v) => Some(v.vm),
        Actor::Thread(_) => None,
    }
}

/// The interrupt events: lines raised and lowered, their routes, and EOIs.
pub(crate) fn on_irq(ctx: &mut Ctx<'_>, lines: &mut Lines, st: &mut State, irq: &IrqEvent) {
    let vm = vm_of(ctx.actor);
    match irq {
        IrqEvent::SetIrq { gsi, level: Some(level), .. } => {
            let i = lines.line(vm, *gsi);
            lines.lines[i].raised = (*level != 0).then_some(ctx.at);
            lines.routing = (*level != 0).then_some((ctx.actor, i));
        }
        IrqEvent::MsiSetIrq { msi } => {
            if let Some((actor, i)) = lines.routing.take()
                && actor == ctx.actor
                && let Some(line) = lines.lines.get_mut(i)
            {
                line.vector = msi.vector();
                line.level = msi.level_triggered() == Some(true);
            }
        }
        IrqEvent::IoapicSetIrq { pin, entry, .. } => {
            // The in-kernel I/O APIC's pins are GSIs 0-23.
            let i = lines.line(vm, *pin);
            lines.lines[i].vector = entry.vector();
            lines.lines[i].level = entry.level_triggered() == Some(true);
            lines.routing = None;
        }
        IrqEvent::Eoi { vector, .. } => {
            st.eoi = None;
            let Ok(vector) = u8::try_from(*vector) else { return };
            let line = lines.lines.iter().find(|l| {
                l.level
                    && l.vector == Some(vector)
                    && (l.vm == vm || l.vm.is_none() || vm.is_none())
            });
            let Some(line) = line else { return };
            ctx.checked(RULE);
            if let Some(raised) = line.raised {
                st.eoi = Some(Eoi { at: ctx.at, vector, gsi: line.gsi, raised });
            }
        }
        // A level the input did not show says nothing of the line; the PIC's lines, the local
        // APIC's own events and IPIs carry no I/O APIC route; KVM keeps the paravirtual EOI
        // off for level-triggered vectors.
        IrqEvent::SetIrq { level: None, .. }
        | IrqEvent::IoapicDelayedEoiInj { .. }
        | IrqEvent::PicSetIrq(_)
        | IrqEvent::Apic { .. }
        | IrqEvent::ApicAcceptIrq(_)
        | IrqEvent::ApicvAcceptIrq(_)
        | IrqEvent::ApicIpi { .. }
        | IrqEvent::PvEoi { .. }
        | IrqEvent::ApicvInhibitChanged { .. } => {}
    }
}

/// `kvm_userspace_exit`: an EOI that goes to userspace's I/O APIC with the line asserted.
pub(crate) fn on_userspace_exit(ctx: &mut Ctx<'_>, st: &mut State, ioapic_eoi: bool) {
    let Some(eoi) = st.eoi.take() else { return };
    if !ioapic_eoi || st.reported == Some(eoi.raised) {
        return;
    }
    st.reported = Some(eoi.raised);
    ctx.report(RULE, Severity::Warning, &[eoi.raised, eoi.at], || {
        format!(
            "level-triggered vector {v} (GSI {g}) was EOIed while its line was still asserted (raised at {r}, not lowered since), and KVM sent the EOI to the userspace I/O APIC (KVM_EXIT_IOAPIC_EOI): with a split irqchip that I/O APIC delivers the interrupt again at once. A guest EOIs before servicing the device only with x2APIC Suppress EOI Broadcast enabled (it then issues a directed EOI itself), which KVM advertised with a split irqchip without honouring it — the interrupt storm of kernel bugzilla 220549 (Windows with Credential Guard), fixed by 6517dfbcc918 \"KVM: x86: Add x2APIC \"features\" to control EOI broadcast suppression\"",
            v = eoi.vector,
            g = eoi.gsi,
            r = eoi.raised,
        )
    });
}

/// `kvm_entry`: an EOI still pending stayed in the kernel.
pub(crate) fn disarm(st: &mut State) {
    st.eoi = None;
}

#[cfg(test)]
mod tests {
    use vmxray_events::EventKind;
    use vmxray_events::irq::{IrqEvent, MsiMessage, PartialWord};
    use vmxray_events::test_util::EventBuilder;

    use crate::anomaly::{RuleId, Severity};
    use crate::model::Model;

    const IOAPIC_EOI: u32 = 26;

    fn set_irq(t: &mut EventBuilder, gsi: u32, level: i32) -> u64 {
        t.push(EventKind::Irq(IrqEvent::SetIrq { gsi, level: Some(level), irq_source_id: Some(0) }))
    }

    /// `kvm_msi_set_irq dst 0 vec V (Fixed|physical|level)`.
    fn msi(t: &mut EventBuilder, vector: u8) {
        let msi = MsiMessage {
            address: PartialWord::full(0xfee0_0000),
            data: PartialWord::full(1 << 15 | u64::from(vector)),
        };
        t.push(EventKind::Irq(IrqEvent::MsiSetIrq { msi }));
    }

    fn eoi(t: &mut EventBuilder, vector: i32) -> u64 {
        t.push(EventKind::Irq(IrqEvent::Eoi { apicid: 0, vector }))
    }

    fn found(t: &EventBuilder) -> Vec<(u64, Vec<u64>)> {
        let mut model = Model::default();
        let mut out = Vec::new();
        for e in &t.events {
            for a in model.step(e).anomalies {
                if a.rule == RuleId::LevelEoiLineAsserted {
                    assert_eq!(a.severity, Severity::Warning);
                    out.push((a.at.0, a.evidence.iter().map(|e| e.0).collect()));
                }
            }
        }
        out
    }

    /// The split-irqchip run of bugzilla 220549: raised, delivered, EOIed at once, EOI exit.
    #[test]
    fn an_eoi_of_an_asserted_line_sent_to_userspace_is_reported() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        let raised = set_irq(&mut t, 19, 1);
        msi(&mut t, 129);
        let e = eoi(&mut t, 129);
        let exit = t.userspace_exit(IOAPIC_EOI);
        // The storm that follows (the same raise EOIed again and again) is the same finding.
        eoi(&mut t, 129);
        t.userspace_exit(IOAPIC_EOI);
        assert_eq!(found(&t), vec![(exit, vec![raised, e])]);
    }

    /// The kernel-irqchip run of the same report, and the other ways it stays quiet.
    #[test]
    fn a_lowered_line_an_edge_vector_or_an_eoi_kept_in_the_kernel_is_not() {
        let mut t = EventBuilder::new();
        t.establish_l1();
        // Lowered before the EOI (the device was serviced).
        set_irq(&mut t, 19, 1);
        msi(&mut t, 129);
        set_irq(&mut t, 19, 0);
        eoi(&mut t, 129);
        t.userspace_exit(IOAPIC_EOI);
        // Another vector's EOI.
        set_irq(&mut t, 19, 1);
        msi(&mut t, 129);
        eoi(&mut t, 130);
        t.userspace_exit(IOAPIC_EOI);
        // An entry in between: the EOI did not go to userspace.
        eoi(&mut t, 129);
        t.entry(0x1000);
        t.userspace_exit(IOAPIC_EOI);
        assert_eq!(found(&t), vec![]);
    }
}
