//! One value per actor that stays in its map between uses: the exit each vCPU has pending in
//! [`crate::stats`] and [`crate::context`].
//!
//! Every `kvm_exit` opens its vCPU's slot and the next `kvm_entry` closes it, millions of times
//! per trace. Inserting a ~150-byte value into a hash map and removing it again (moving it in
//! and out of the table, leaving a tombstone) showed in profiles of `vmxray stats`; here a slot
//! is written in place and closing it only clears a flag, so a vCPU's exit/entry pair costs
//! two lookups and no moves. Memory: one slot per actor that ever had a value (vCPUs and their
//! threads), not per event.
//!
//! ```text
//!  kvm_exit  vCPU 0 ─► open(0)   slot 0: [open]   exit written in place
//!  kvm_entry vCPU 0 ─► close(0)  slot 0: [closed] read by reference, kept for the next exit
//! ```

use vmxray_events::Actor;

use crate::FastMap as HashMap;

#[derive(Clone, Debug)]
struct Slot<T> {
    actor: Actor,
    open: bool,
    value: T,
}

/// Per-actor slots, open (holding a value) or closed (kept for reuse).
///
/// A vCPU with a small VM index and id finds its slot through a table indexed by both (no
/// hashing: the lookup is a load); other actors (threads, large ids) through a map.
#[derive(Clone, Debug)]
pub(crate) struct ActorSlots<T> {
    slots: Vec<Slot<T>>,
    /// `Vcpu { vm, id }` with `vm < DENSE_VMS` and `id < DENSE_IDS` → slot index + 1 (0: none).
    dense: Vec<u32>,
    /// Every other actor → slot index.
    sparse: HashMap<Actor, u32>,
}

const DENSE_VMS: u32 = 64;
const DENSE_IDS: u32 = 1024;

impl<T> Default for ActorSlots<T> {
    fn default() -> Self {
        Self { slots: Vec::new(), dense: Vec::new(), sparse: HashMap::default() }
    }
}

/// The dense table's index of `actor`, when it has one.
#[inline]
fn dense_index(actor: Actor) -> Option<usize> {
    match actor {
        Actor::Vcpu(v) if v.vm.0 < DENSE_VMS && v.id < DENSE_IDS => {
            Some((v.vm.0 * DENSE_IDS + v.id) as usize)
        }
        Actor::Vcpu(_) | Actor::Thread(_) => None,
    }
}

impl<T> ActorSlots<T> {
    /// The slot index of `actor`, if it has a slot.
    #[inline]
    fn find(&self, actor: Actor) -> Option<usize> {
        match dense_index(actor) {
            Some(d) => match self.dense.get(d) {
                Some(&i) if i > 0 => Some(i as usize - 1),
                _ => None,
            },
            None => self.sparse.get(&actor).map(|&i| i as usize),
        }
    }

    /// A new slot for `actor` (which has none), closed, holding `value`.
    #[cold]
    fn add(&mut self, actor: Actor, value: T) -> usize {
        let at = self.slots.len();
        self.slots.push(Slot { actor, open: false, value });
        let index = u32::try_from(at).unwrap_or(u32::MAX);
        match dense_index(actor) {
            Some(d) => {
                if self.dense.len() <= d {
                    self.dense.resize(d + 1, 0);
                }
                self.dense[d] = index.saturating_add(1);
            }
            None => {
                self.sparse.insert(actor, index);
            }
        }
        at
    }

    #[inline]
    fn slot_mut(&mut self, actor: Actor) -> Option<&mut Slot<T>> {
        let i = self.find(actor)?;
        self.slots.get_mut(i)
    }

    /// The open value of `actor`.
    #[inline]
    pub(crate) fn get_mut(&mut self, actor: Actor) -> Option<&mut T> {
        self.slot_mut(actor).filter(|s| s.open).map(|s| &mut s.value)
    }

    /// True when `actor` has an open value.
    #[inline]
    pub(crate) fn is_open(&self, actor: Actor) -> bool {
        self.find(actor).and_then(|i| self.slots.get(i)).is_some_and(|s| s.open)
    }

    /// Opens `actor`'s slot with `value`; returns the value it replaced when the slot was
    /// open (one lookup either way).
    #[inline]
    pub(crate) fn open(&mut self, actor: Actor, value: T) -> Option<T> {
        match self.slot_mut(actor) {
            // A closed slot's value is overwritten, not moved out to be dropped: most opens
            // find their slot closed, and the value is ~150 bytes.
            Some(slot) if slot.open => Some(std::mem::replace(&mut slot.value, value)),
            Some(slot) => {
                slot.open = true;
                slot.value = value;
                None
            }
            None => {
                let at = self.add(actor, value);
                if let Some(slot) = self.slots.get_mut(at) {
                    slot.open = true;
                }
                None
            }
        }
    }

    /// Opens `actor`'s slot and lends its value to be rewritten in place: `reset` gets the
    /// value the slot held last (closed, or `fresh()` for a new slot), so buffers it owns are
    /// reused.
    #[inline]
    pub(crate) fn open_with(
        &mut self,
        actor: Actor,
        fresh: impl FnOnce() -> T,
        reset: impl FnOnce(&mut T),
    ) {
        let at = match self.find(actor) {
            Some(at) => at,
            None => self.add(actor, fresh()),
        };
        if let Some(slot) = self.slots.get_mut(at) {
            slot.open = true;
            reset(&mut slot.value);
        }
    }

    /// Closes `actor`'s slot and lends the value it held, when it was open.
    #[inline]
    pub(crate) fn close(&mut self, actor: Actor) -> Option<&mut T> {
        let slot = self.slot_mut(actor).filter(|s| s.open)?;
        slot.open = false;
        Some(&mut slot.value)
    }

    /// The open values.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter(|s| s.open).map(|s| &mut s.value)
    }

    /// Closes every slot and lends the values that were open, in the order their actors got
    /// their slots.
    pub(crate) fn close_all(&mut self) -> impl Iterator<Item = (Actor, &mut T)> {
        self.slots.iter_mut().filter(|s| s.open).map(|s| {
            s.open = false;
            (s.actor, &mut s.value)
        })
    }

    /// Forgets every slot (their buffers too).
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.dense.clear();
        self.sparse.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_slot_is_invisible_until_reopened() {
        let mut slots = ActorSlots::default();
        let a = Actor::Thread(7);
        assert!(slots.get_mut(a).is_none());
        assert_eq!(slots.open(a, 1), None);
        assert!(slots.is_open(a));
        *slots.get_mut(a).unwrap() += 1;
        assert_eq!(slots.close(a).copied(), Some(2));
        assert!(!slots.is_open(a));
        assert!(slots.close(a).is_none(), "closing twice lends nothing");
        assert!(slots.get_mut(a).is_none());
        assert_eq!(slots.values_mut().count(), 0);
        assert_eq!(slots.open(a, 5), None, "a closed value is not returned");
        assert_eq!(slots.open(a, 6), Some(5), "an open one is");
        slots.close(a);
        slots.open_with(a, || 0, |v| assert_eq!(*v, 6, "the closed value is lent for reuse"));
        assert!(slots.is_open(a));
    }

    #[test]
    fn close_all_lends_only_the_open_values() {
        let mut slots = ActorSlots::default();
        for pid in 0..4 {
            assert_eq!(slots.open(Actor::Thread(pid), pid), None);
        }
        slots.close(Actor::Thread(1));
        let mut got: Vec<(Actor, i32)> = slots.close_all().map(|(a, v)| (a, *v)).collect();
        got.sort_by_key(|(_, v)| *v);
        let want = [0, 2, 3].map(|p| (Actor::Thread(p), p));
        assert_eq!(got, want);
        assert_eq!(slots.close_all().count(), 0);
        assert_eq!(slots.open(Actor::Thread(9), 9), None);
        slots.clear();
        assert!(slots.get_mut(Actor::Thread(9)).is_none());
    }

    #[test]
    fn vcpus_in_the_table_and_in_the_map_keep_their_own_slots() {
        use vmxray_events::{Vcpu, VmId};
        let vcpu = |vm, id| Actor::Vcpu(Vcpu { vm: VmId(vm), id });
        // Small ids (the table), ids past it and VMs past it (the map), and a thread whose
        // pid equals a vCPU's id.
        let actors =
            [vcpu(0, 0), vcpu(0, 1), vcpu(1, 0), vcpu(0, 5000), vcpu(900, 3), Actor::Thread(1)];
        let mut slots = ActorSlots::default();
        for (n, a) in actors.iter().enumerate() {
            assert_eq!(slots.open(*a, n), None, "{a:?}");
        }
        for (n, a) in actors.iter().enumerate() {
            assert_eq!(slots.get_mut(*a).copied(), Some(n), "{a:?}");
        }
        assert_eq!(slots.close(vcpu(0, 1)).copied(), Some(1));
        assert!(!slots.is_open(vcpu(0, 1)));
        assert!(slots.is_open(Actor::Thread(1)), "a thread is not the vCPU of the same number");
        let closed: Vec<Actor> = slots.close_all().map(|(a, _)| a).collect();
        assert_eq!(closed, [actors[0], actors[2], actors[3], actors[4], actors[5]]);
        assert!(slots.get_mut(vcpu(2, 0)).is_none(), "a VM never seen has no slot");
    }
}
