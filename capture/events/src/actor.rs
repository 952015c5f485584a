//! Who an event belongs to: the one vCPU type ([`Actor`]) and the one thread → vCPU
//! attribution ([`Attribution`]) that the model, the statistics, `dump --vcpu` and the TUI all
//! use.
//!
//! KVM runs each vCPU on one thread (`KVM_RUN` is per vCPU fd), so the thread (pid) that hit a
//! tracepoint identifies the vCPU once any of its events carried `vcpu_id` (`kvm_entry`,
//! `kvm_exit` since 5.3, ...). Events without one (`kvm_cr`, kvmmmu, the nested events before
//! 6.x, untyped events) belong to the vCPU their thread last showed, else to the thread itself
//! (an MMU notifier, a kworker, an ioctl thread, or a vCPU thread of a trace that never names
//! its vCPU).

use std::fmt;

use serde::Serialize;

use crate::event::{Event, EventKind};

/// What an event is attributed to: a vCPU (the event carried `vcpu_id`, or its thread is known
/// to run that vCPU), or a thread never seen running a vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A vCPU.
    Vcpu(u32),
    /// A thread (pid) not attributed to a vCPU.
    Thread(i32),
}

impl Actor {
    /// The vCPU id, when the actor is a vCPU.
    pub fn vcpu_id(self) -> Option<u32> {
        match self {
            Self::Vcpu(id) => Some(id),
            Self::Thread(_) => None,
        }
    }

    /// The short label of tables and CSV: `3`, or `tid:1234`.
    pub fn label(self) -> String {
        match self {
            Self::Vcpu(id) => id.to_string(),
            Self::Thread(tid) => format!("tid:{tid}"),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vcpu(id) => write!(f, "vcpu {id}"),
            Self::Thread(pid) => write!(f, "thread {pid}"),
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
    pub newly_bound: Option<(i32, u32)>,
}

/// Learns which vCPU each thread runs and attributes every event.
///
/// A trace has a few threads per vCPU at most, so the map is a short list searched linearly:
/// cheaper per event than hashing, and cheap to clone for the model's snapshots.
#[derive(Clone, Debug, Default)]
pub struct Attribution {
    by_thread: Vec<(i32, u32)>,
}

impl Attribution {
    /// Attributes `event`, learning from it.
    ///
    /// - an explicit VMCS field record names its vCPU; it says nothing about the thread that
    ///   printed it (or the file it came from);
    /// - untyped events are attributed by thread only: their own `vcpu_id` fields, where they
    ///   have one, follow no single convention;
    /// - any other event's `vcpu_id` binds its thread to that vCPU.
    pub fn attribute(&mut self, event: &Event) -> Attributed {
        let carried = match &event.kind {
            EventKind::VmcsField(v) => {
                return Attributed { actor: Actor::Vcpu(v.record.vcpu), newly_bound: None };
            }
            EventKind::Other(_) | EventKind::VmcsProbe(_) => None,
            kind => kind.vcpu_id(),
        };
        match carried {
            Some(vcpu) => {
                let newly_bound = match self.by_thread.iter_mut().find(|(p, _)| *p == event.pid) {
                    Some(entry) if entry.1 == vcpu => None,
                    Some(entry) => {
                        entry.1 = vcpu;
                        Some((event.pid, vcpu))
                    }
                    None => {
                        self.by_thread.push((event.pid, vcpu));
                        Some((event.pid, vcpu))
                    }
                };
                Attributed { actor: Actor::Vcpu(vcpu), newly_bound }
            }
            None => Attributed { actor: self.of_thread(event.pid), newly_bound: None },
        }
    }

    /// The vCPU a thread is known to run, else the thread itself.
    pub fn of_thread(&self, pid: i32) -> Actor {
        self.vcpu_of_thread(pid).map_or(Actor::Thread(pid), Actor::Vcpu)
    }

    /// The vCPU a thread is known to run.
    pub fn vcpu_of_thread(&self, pid: i32) -> Option<u32> {
        self.by_thread.iter().find(|(p, _)| *p == pid).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::EventBuilder;

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
        assert_eq!(got[1], Attributed { actor: Actor::Vcpu(2), newly_bound: Some((7, 2)) });
        assert_eq!(got[2].actor, Actor::Vcpu(2));
        assert_eq!(a.vcpu_of_thread(7), Some(2));
        assert_eq!(
            (Actor::Vcpu(3).label(), Actor::Thread(9).label()),
            ("3".into(), "tid:9".into())
        );
    }
}
