//! Who an event belongs to: the one vCPU type ([`Actor`], a vCPU of a VM) and the one thread →
//! vCPU attribution ([`Attribution`]) that the model, the statistics, `dump --vcpu` and the
//! TUI all use.
//!
//! **vCPUs.** KVM runs each vCPU on one thread (`KVM_RUN` is per vCPU fd), so the thread (pid)
//! that hit a tracepoint identifies the vCPU once any of its events carried `vcpu_id`
//! (`kvm_entry`, `kvm_exit` since 5.3, ...). Events without one (`kvm_cr`, kvmmmu, the nested
//! events before 6.x, untyped events) belong to the vCPU their thread last showed, else to the
//! thread itself (an MMU notifier, a kworker, an ioctl thread, or a vCPU thread of a trace that
//! never names its vCPU).
//!
//! **VMs.** A host runs many VMs and each has a vCPU 0: a vCPU is never `vcpu_id` alone but
//! (VM, `vcpu_id`). A VM is the VMM process (tgid) where the trace says it (ftrace's
//! `record-tgid` column, perf's pid/tid, the recorder's identity lines of [`crate::identity`]).
//! Where it does not, the threads themselves keep the VMs apart: two threads that both run a
//! vCPU 0 at once belong to two VMs. Such VMs are *inferred* ([`Vm::inferred`]): the vCPUs
//! stay apart, but which vCPUs share a VM is a guess (a thread joins the first inferred VM
//! that has no thread on its vCPU id yet), and reports say so.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::{Event, EventKind};

/// A VM of the trace: its index in the attribution's table, in first-seen order (the first VM
/// of a single-VM trace is `VmId(0)`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct VmId(pub u32);

/// A vCPU: its VM and its `vcpu_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Vcpu {
    /// The VM.
    pub vm: VmId,
    /// The `vcpu_id`.
    pub id: u32,
}

impl Vcpu {
    /// vCPU `id` of the first VM (traces of one VM; tests).
    pub fn of_first_vm(id: u32) -> Self {
        Self { vm: VmId(0), id }
    }
}

/// What an event is attributed to: a vCPU (the event carried `vcpu_id`, or its thread is known
/// to run that vCPU), or a thread never seen running a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A vCPU.
    Vcpu(Vcpu),
    /// A thread (pid) not attributed to a vCPU.
    Thread(i32),
}

impl Actor {
    /// vCPU `id` of the first VM (the only VM of most traces).
    pub fn vcpu(id: u32) -> Self {
        Self::Vcpu(Vcpu::of_first_vm(id))
    }

    /// The vCPU id, when the actor is a vCPU.
    pub fn vcpu_id(self) -> Option<u32> {
        match self {
            Self::Vcpu(v) => Some(v.id),
            Self::Thread(_) => None,
        }
    }

    /// The VM, when the actor is a vCPU.
    pub fn vm(self) -> Option<VmId> {
        match self {
            Self::Vcpu(v) => Some(v.vm),
            Self::Thread(_) => None,
        }
    }

    /// The short label of tables and CSV: `3`, `vm1/3` for a vCPU of another VM than the
    /// first, or `tid:1234`.
    pub fn label(self) -> String {
        match self {
            Self::Vcpu(Vcpu { vm: VmId(0), id }) => id.to_string(),
            Self::Vcpu(Vcpu { vm, id }) => format!("vm{}/{id}", vm.0),
            Self::Thread(tid) => format!("tid:{tid}"),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vcpu(Vcpu { vm: VmId(0), id }) => write!(f, "vcpu {id}"),
            Self::Vcpu(Vcpu { vm, id }) => write!(f, "vm{} vcpu {id}", vm.0),
            Self::Thread(pid) => write!(f, "thread {pid}"),
        }
    }
}

/// What the trace says about one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// Its index.
    pub id: VmId,
    /// The VMM process, when the trace says it.
    pub tgid: Option<i32>,
    /// The VM's name, when the recorder wrote it.
    pub name: Option<Box<str>>,
    /// No tgid: the VM was inferred from vCPU ids running at once on different threads; which
    /// vCPUs share it is a guess (see the module docs).
    pub inferred: bool,
    /// Its vCPUs, in first-seen order, with the thread that runs each.
    pub vcpus: Vec<(u32, i32)>,
}

impl Vm {
    /// True when `selector` names this VM: its index (`vm1` or `1`), its process id, or its
    /// name.
    pub fn matches(&self, selector: &str) -> bool {
        let s = selector.trim();
        let index = s.strip_prefix("vm").unwrap_or(s);
        self.name.as_deref() == Some(s)
            || index.parse::<u32>().is_ok_and(|i| i == self.id.0 && s.starts_with("vm"))
            || s.parse::<i32>().is_ok_and(|p| Some(p) == self.tgid)
            || (self.tgid.is_none() && s.parse::<u32>().is_ok_and(|i| i == self.id.0))
    }

    /// `guest0`, `pid 2231`, or `vm1` (an inferred VM).
    pub fn label(&self) -> String {
        match (&self.name, self.tgid) {
            (Some(name), _) => name.to_string(),
            (None, Some(tgid)) => format!("pid {tgid}"),
            (None, None) => format!("vm{}", self.id.0),
        }
    }
}

/// One attribution decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributed {
    /// Who the event belongs to.
    pub actor: Actor,
    /// The event taught that its thread runs this vCPU (first time, or a different vCPU than
    /// before): the thread's earlier unattributed events belong to it too.
    pub newly_bound: Option<(i32, Vcpu)>,
}

#[derive(Clone, Debug)]
struct Thread {
    pid: i32,
    tgid: Option<i32>,
    vcpu: Option<Vcpu>,
}

/// Learns which vCPU of which VM each thread runs and attributes every event.
///
/// A trace has a few threads per vCPU at most, so the tables are short lists searched
/// linearly: cheaper per event than hashing, and cheap to clone for the model's snapshots.
#[derive(Clone, Debug, Default)]
pub struct Attribution {
    threads: Vec<Thread>,
    vms: Vec<Vm>,
    /// The thread of the last lookup (most events come in runs from one thread).
    last: usize,
    /// Per CPU (modulo [`CPU_HINTS`]), the thread [`Attribution::of_bound_thread`] last found
    /// there: a vCPU thread stays on its CPU for long, while a trace's events interleave the
    /// CPUs, so the last lookup's thread is often not the next event's.
    by_cpu: [u16; CPU_HINTS],
}

/// CPUs with a thread hint of their own in [`Attribution`] (further ones share them).
pub const CPU_HINTS: usize = 32;

impl Attribution {
    /// Attributes `event`, learning from it.
    ///
    /// - an identity line (written by the recorder) says the thread's process, the VM's name, and
    ///   the vCPU the thread runs when the VMM names its threads after them;
    /// - an explicit VMCS field record names its vCPU; it says nothing about the thread that
    ///   printed it (or the file it came from), and belongs to the VM that has that vCPU;
    /// - untyped events are attributed by thread only: their own `vcpu_id` fields, where they
    ///   have one, follow no single convention;
    /// - any other event's `vcpu_id` binds its thread to that vCPU of its VM.
    pub fn attribute(&mut self, event: &Event) -> Attributed {
        match self.of_bound_thread(event) {
            Some(vcpu) => Attributed { actor: Actor::Vcpu(vcpu), newly_bound: None },
            None => self.attribute_and_learn(event),
        }
    }

    /// The vCPU of `event` when [`Attribution::attribute`] would decide it without learning
    /// anything (`newly_bound` None), else `None` (call `attribute`); it only moves the CPU's
    /// search hint. The common case of a trace: the event comes from the thread of its CPU's
    /// last event, which runs a known vCPU and whose process is known (or the event does not
    /// say it), and the event names that vCPU or none. Small and inlined, for per-event loops
    /// (the model's step) that cannot afford a call for it.
    #[inline]
    pub fn of_bound_thread(&mut self, event: &Event) -> Option<Vcpu> {
        let hint = &mut self.by_cpu[event.cpu as usize % CPU_HINTS];
        let t = match self.threads.get(usize::from(*hint)) {
            Some(t) if t.pid == event.pid => t,
            // Another thread than the CPU's last: found by the scan the full path would make.
            _ => {
                let i = self.threads.iter().position(|t| t.pid == event.pid)?;
                *hint = u16::try_from(i).unwrap_or(u16::MAX);
                self.threads.get(i)?
            }
        };
        let vcpu = t.vcpu?;
        if t.tgid.is_none() && event.tgid.is_some() {
            return None;
        }
        let carried = match &event.kind {
            EventKind::KvmExit(info) | EventKind::KvmNestedVmexit(info) => info.vcpu_id(),
            EventKind::KvmEntry(entry) => Some(entry.vcpu_id),
            EventKind::KvmNestedVmexitInject(_)
            | EventKind::KvmNestedVmenter(_)
            | EventKind::KvmCr { .. }
            | EventKind::KvmMmuGetPage { .. } => None,
            // What the full path learns from besides a `vcpu_id`: it decides.
            EventKind::VmcsField(_)
            | EventKind::Identity(_)
            | EventKind::Other(_)
            | EventKind::VmcsProbe(_) => return None,
            // Any other kind: its `vcpu_id`, as the full path reads it.
            kind => kind.vcpu_id(),
        };
        carried.is_none_or(|id| id == vcpu.id).then_some(vcpu)
    }

    fn attribute_and_learn(&mut self, event: &Event) -> Attributed {
        let carried = match &event.kind {
            EventKind::VmcsField(v) => {
                let vcpu = self.record_vcpu(v.record.vcpu, event.pid);
                return Attributed { actor: Actor::Vcpu(vcpu), newly_bound: None };
            }
            EventKind::Identity(i) => {
                let id = &i.identity;
                let t = self.thread(id.pid);
                self.threads[t].tgid = Some(id.tgid);
                if let Some(vcpu) = self.threads[t].vcpu {
                    // The thread's events came first (a VM started while recording, named at
                    // the recorder's next scan): its inferred VM is that process.
                    self.adopt_process(vcpu.vm, id.tgid);
                }
                if let Some(name) = &id.vm {
                    let vm = self.vm_of_process(id.tgid);
                    self.vms[vm.0 as usize].name = Some(name.clone());
                }
                // The VMM named the thread after its vCPU: bind it, unless an event already
                // did (kernels whose events carry no vcpu_id, or an emulator-only backend).
                let newly_bound = match (id.vcpu, self.threads[t].vcpu) {
                    (Some(v), None) => Some((id.pid, self.bind(t, v))),
                    (Some(_) | None, _) => None,
                };
                return Attributed { actor: self.of_thread(event.pid), newly_bound };
            }
            EventKind::Other(o) if &*o.name == "task_newtask" => {
                self.new_task(event, &o.fields);
                None
            }
            EventKind::Other(_) | EventKind::VmcsProbe(_) => None,
            kind => kind.vcpu_id(),
        };
        let t = self.thread(event.pid);
        if let Some(tgid) = event.tgid
            && self.threads[t].tgid.is_none()
        {
            self.threads[t].tgid = Some(tgid);
        }
        match carried {
            Some(id) => match self.threads[t].vcpu {
                Some(vcpu) if vcpu.id == id => {
                    Attributed { actor: Actor::Vcpu(vcpu), newly_bound: None }
                }
                _ => {
                    let vcpu = self.bind(t, id);
                    Attributed { actor: Actor::Vcpu(vcpu), newly_bound: Some((event.pid, vcpu)) }
                }
            },
            None => {
                let actor = self.threads[t].vcpu.map_or(Actor::Thread(event.pid), Actor::Vcpu);
                Attributed { actor, newly_bound: None }
            }
        }
    }

    /// The vCPU a thread is known to run, else the thread itself.
    pub fn of_thread(&self, pid: i32) -> Actor {
        self.vcpu_of_thread(pid).map_or(Actor::Thread(pid), Actor::Vcpu)
    }

    /// The vCPU a thread is known to run.
    pub fn vcpu_of_thread(&self, pid: i32) -> Option<Vcpu> {
        self.threads.iter().find(|t| t.pid == pid).and_then(|t| t.vcpu)
    }

    /// True when an event of thread `pid` attributed to `actor` belongs to a VM `selector`
    /// names ([`Vm::matches`]): a vCPU of that VM, or any thread of its process.
    pub fn in_vm(&self, actor: Actor, pid: i32, selector: &str) -> bool {
        let vm = match actor {
            Actor::Vcpu(v) => self.vms.get(v.vm.0 as usize),
            Actor::Thread(_) => {
                let tgid = self.threads.iter().find(|t| t.pid == pid).and_then(|t| t.tgid);
                match tgid {
                    Some(tgid) => match self.vms.iter().find(|vm| vm.tgid == Some(tgid)) {
                        Some(vm) => Some(vm),
                        None => return selector.trim().parse::<i32>() == Ok(tgid),
                    },
                    None => None,
                }
            }
        };
        vm.is_some_and(|vm| vm.matches(selector))
    }

    /// Every VM seen so far, in [`VmId`] order.
    pub fn vms(&self) -> &[Vm] {
        &self.vms
    }

    fn thread(&mut self, pid: i32) -> usize {
        if self.threads.get(self.last).is_some_and(|t| t.pid == pid) {
            return self.last;
        }
        let at = match self.threads.iter().position(|t| t.pid == pid) {
            Some(at) => at,
            None => {
                self.threads.push(Thread { pid, tgid: None, vcpu: None });
                self.threads.len() - 1
            }
        };
        self.last = at;
        at
    }

    fn vm_of_process(&mut self, tgid: i32) -> VmId {
        if let Some(vm) = self.vms.iter().find(|vm| vm.tgid == Some(tgid)) {
            return vm.id;
        }
        self.new_vm(Some(tgid))
    }

    /// `task:task_newtask` (the recorder enables it with its identity lines): a thread created
    /// while recording belongs to its creator's process (`CLONE_THREAD`), a new process's first
    /// thread is that process. A VMM's vCPU threads started after the recorder's last scan
    /// thus still belong to their VM.
    fn new_task(&mut self, event: &Event, fields: &crate::Fields) {
        const CLONE_THREAD: u64 = 0x0001_0000;
        let Some(pid) = fields.get("pid").and_then(crate::FieldValue::as_i64) else { return };
        let Ok(pid) = i32::try_from(pid) else { return };
        let Some(flags) = fields.get("clone_flags").and_then(crate::FieldValue::as_u64) else {
            return;
        };
        let tgid = if flags & CLONE_THREAD != 0 {
            let creator = self.thread(event.pid);
            match self.threads[creator].tgid.or(event.tgid) {
                Some(tgid) => tgid,
                None => return,
            }
        } else {
            pid
        };
        let t = self.thread(pid);
        if self.threads[t].tgid.is_none() {
            self.threads[t].tgid = Some(tgid);
        }
    }

    /// An inferred VM learns its process, unless another VM already is that process or one
    /// of its threads is known to belong to another.
    fn adopt_process(&mut self, vm: VmId, tgid: i32) {
        if self.vms.iter().any(|v| v.tgid == Some(tgid)) {
            return;
        }
        let Some(entry) = self.vms.get(vm.0 as usize) else { return };
        if entry.tgid.is_some() {
            return;
        }
        let other_process = entry.vcpus.iter().any(|(_, pid)| {
            self.threads.iter().any(|t| t.pid == *pid && t.tgid.is_some_and(|g| g != tgid))
        });
        if other_process {
            return;
        }
        let entry = &mut self.vms[vm.0 as usize];
        entry.tgid = Some(tgid);
        entry.inferred = false;
    }

    fn new_vm(&mut self, tgid: Option<i32>) -> VmId {
        let id = VmId(u32::try_from(self.vms.len()).unwrap_or(u32::MAX));
        self.vms.push(Vm { id, tgid, inferred: tgid.is_none(), ..Vm::default() });
        id
    }

    /// Binds thread `t` to vCPU `id` of its VM.
    fn bind(&mut self, t: usize, id: u32) -> Vcpu {
        let pid = self.threads[t].pid;
        let vm = match (self.threads[t].tgid, self.threads[t].vcpu) {
            (Some(tgid), _) => self.vm_of_process(tgid),
            // A thread that switches vCPU stays in its VM.
            (None, Some(previous)) => previous.vm,
            (None, None) => {
                // The first inferred VM with no thread on this vCPU id, else a new one.
                let free = self
                    .vms
                    .iter()
                    .find(|vm| vm.inferred && !vm.vcpus.iter().any(|(v, _)| *v == id));
                match free {
                    Some(vm) => vm.id,
                    None => self.new_vm(None),
                }
            }
        };
        let vm_entry = &mut self.vms[vm.0 as usize];
        match vm_entry.vcpus.iter_mut().find(|(v, _)| *v == id) {
            // The vCPU moved to another thread of the same process.
            Some(slot) => slot.1 = pid,
            None => vm_entry.vcpus.push((id, pid)),
        }
        let vcpu = Vcpu { vm, id };
        self.threads[t].vcpu = Some(vcpu);
        vcpu
    }

    /// The vCPU an explicit record names: the printing thread's VM when that thread runs a
    /// vCPU, else the only VM with that vCPU, else the first VM that has it, else the first VM.
    fn record_vcpu(&self, id: u32, pid: i32) -> Vcpu {
        if let Some(vm) = self.vcpu_of_thread(pid).map(|v| v.vm) {
            return Vcpu { vm, id };
        }
        let vm = self
            .vms
            .iter()
            .find(|vm| vm.vcpus.iter().any(|(v, _)| *v == id))
            .map_or(VmId(0), |vm| vm.id);
        Vcpu { vm, id }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::EventBuilder;

    /// Wherever the shortcut decides, the full path decides the same and learns nothing: two
    /// threads switching vCPUs, events with and without `vcpu_id`, a tgid appearing late.
    #[test]
    fn the_bound_thread_shortcut_agrees_with_the_full_path() {
        let mut t = EventBuilder::new();
        for (pid, vcpu) in [(7, 0), (7, 0), (8, 1), (7, 0), (7, 2), (8, 1), (8, 0), (7, 2)] {
            t.pid = pid;
            t.vcpu = vcpu;
            t.cr(true, 3, 0x1000);
            t.entry(0x10);
            t.exit(10, 0x10);
            t.nested_vmexit_full(10, 0x20, 0, 0);
            t.inject(10);
            t.vmenter(0x1000, 0x20, true, 0x7000);
            t.get_page(0x7, 0, false);
            t.page_fault(0x2000, 2);
        }
        // The process becomes known in the middle of a thread's run of events.
        let mut events = t.events;
        for e in events.iter_mut().skip(43) {
            e.tgid = Some(e.pid + 100);
        }
        let mut a = Attribution::default();
        let mut decided = 0;
        for e in &events {
            let mut full = a.clone();
            let expected = full.attribute_and_learn(e);
            if let Some(vcpu) = a.of_bound_thread(e) {
                decided += 1;
                assert_eq!(expected, Attributed { actor: Actor::Vcpu(vcpu), newly_bound: None });
                // What it knows (`last` and the CPUs' hints only order the search for a thread).
                assert_eq!(
                    format!("{:?} {:?}", full.threads, full.vms),
                    format!("{:?} {:?}", a.threads, a.vms),
                    "the full path learned from {e:?}"
                );
            }
            assert_eq!(a.attribute(e), expected);
        }
        assert!(decided > events.len() / 2, "the shortcut decided {decided} events");
        assert!(decided < events.len(), "the shortcut decided every event");
    }

    #[test]
    fn threads_learn_their_vcpu_and_records_bind_nothing() {
        let mut t = EventBuilder::new();
        t.pid = 7;
        t.cr(true, 3, 0x1000); // #0: no vcpu_id yet: the thread
        t.vcpu = 2;
        t.entry(0x10); // #1
        t.cr(true, 3, 0x2000); // #2
        let mut a = Attribution::default();
        let got: Vec<Attributed> = t.events.iter().map(|e| a.attribute(e)).collect();
        assert_eq!(got[0].actor, Actor::Thread(7));
        let v2 = Vcpu::of_first_vm(2);
        assert_eq!(got[1], Attributed { actor: Actor::Vcpu(v2), newly_bound: Some((7, v2)) });
        assert_eq!(got[2].actor, Actor::Vcpu(v2));
        assert_eq!(a.vcpu_of_thread(7), Some(v2));
        assert_eq!(
            (Actor::vcpu(3).label(), Actor::Thread(9).label()),
            ("3".into(), "tid:9".into())
        );
    }

    /// A VM started while recording: its vCPU's events come before the recorder's next scan
    /// names the thread's process; the inferred VM then is that process (and a second VM's
    /// thread named the same process later does not steal it).
    #[test]
    fn a_late_identity_names_the_inferred_vm() {
        let identity = |pid: i32, tgid: i32| {
            let line = crate::identity::ThreadIdentity {
                pid,
                tgid,
                comm: Some("vmxray".into()),
                ..Default::default()
            }
            .to_line();
            let mut fields = crate::Fields::new();
            fields.push("buf", crate::FieldValue::Str(line.into()));
            Event {
                ts: 9,
                cpu: 0,
                pid: 1,
                tgid: None,
                comm: None,
                kind: EventKind::untyped("ftrace".into(), "print".into(), fields),
            }
        };
        let mut t = EventBuilder::new();
        for pid in [205, 206] {
            t.pid = pid;
            t.entry(0x10);
        }
        let mut a = Attribution::default();
        for e in &t.events {
            a.attribute(e);
        }
        assert_eq!(a.vms().len(), 2);
        assert!(a.vms().iter().all(|vm| vm.inferred && vm.tgid.is_none()));
        let named = identity(205, 205);
        assert!(matches!(named.kind, EventKind::Identity(_)), "{named:?}");
        a.attribute(&named);
        a.attribute(&identity(206, 205));
        assert_eq!((a.vms()[0].tgid, a.vms()[0].inferred), (Some(205), false));
        assert_eq!((a.vms()[1].tgid, a.vms()[1].inferred), (None, true));
    }

    /// Threads created while recording: `task_newtask` says a vCPU thread's process before its
    /// first event (a VM started after the recorder's scan, with threads per vCPU).
    #[test]
    fn new_threads_belong_to_their_creators_process() {
        let newtask = |creator: i32, pid: i32, flags: u64| {
            let mut fields = crate::Fields::new();
            fields.push("pid", crate::FieldValue::I64(i64::from(pid)));
            fields.push("comm", crate::FieldValue::Str("vcpu0".into()));
            fields.push("clone_flags", crate::FieldValue::U64(flags));
            Event {
                ts: 1,
                cpu: 0,
                pid: creator,
                tgid: None,
                comm: None,
                kind: EventKind::untyped("task".into(), "task_newtask".into(), fields),
            }
        };
        // Two VMM processes forked by the lab (no CLONE_THREAD), each creating vCPU threads
        // 0 and 1 (CLONE_THREAD | CLONE_VM ...: 0x3d0f00).
        let mut a = Attribution::default();
        for (vmm, threads) in [(342, [344, 345]), (343, [346, 347])] {
            a.attribute(&newtask(1, vmm, 0x0120_0011));
            for pid in threads {
                a.attribute(&newtask(vmm, pid, 0x003d_0f00));
            }
        }
        let mut t = EventBuilder::new();
        for (pid, vcpu) in [(344, 0), (346, 0), (347, 1), (345, 1)] {
            t.pid = pid;
            t.vcpu = vcpu;
            t.entry(0x10);
        }
        for e in &t.events {
            a.attribute(e);
        }
        let vms: Vec<_> =
            a.vms().iter().map(|vm| (vm.tgid, vm.inferred, vm.vcpus.clone())).collect();
        assert_eq!(
            vms,
            [
                (Some(342), false, vec![(0, 344), (1, 345)]),
                (Some(343), false, vec![(0, 346), (1, 347)])
            ]
        );
    }

    /// Two VMs, each with vCPUs 0 and 1, interleaved: with tgids the VMs are the processes;
    /// without, the two vCPU 0 threads still make two VMs.
    #[test]
    fn equal_vcpu_ids_of_two_vms_stay_apart() {
        for with_tgid in [true, false] {
            let mut t = EventBuilder::new();
            let mut threads = Vec::new();
            for (vm, tgid) in [(0, 100), (1, 200)] {
                for vcpu in 0..2u32 {
                    threads.push((vm, tgid, 101 + tgid + vcpu.cast_signed(), vcpu));
                }
            }
            for round in 0..3 {
                for &(_, tgid, pid, vcpu) in &threads {
                    t.pid = pid;
                    t.vcpu = vcpu;
                    t.entry(0x1000 + round);
                    if with_tgid {
                        t.events.last_mut().unwrap().tgid = Some(tgid);
                    }
                }
            }
            let mut a = Attribution::default();
            let actors: Vec<Actor> = t.events.iter().map(|e| a.attribute(e).actor).collect();
            assert_eq!(a.vms().len(), 2, "with tgid: {with_tgid}");
            for (i, &(vm, _, _, vcpu)) in threads.iter().enumerate() {
                let expect = Actor::Vcpu(Vcpu { vm: VmId(vm), id: vcpu });
                assert_eq!(actors[i], expect, "with tgid: {with_tgid}");
                assert_eq!(actors[i + threads.len()], expect);
            }
            assert_eq!(a.vms()[1].inferred, !with_tgid);
            assert_eq!(a.vms()[0].tgid, with_tgid.then_some(100));
            assert_eq!(a.vms()[1].vcpus, [(0, 301), (1, 302)]);
        }
    }
}
