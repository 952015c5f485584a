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
    open: bool,
    value: T,
}

/// Per-actor slots, open (holding a value) or closed (kept for reuse).
#[derive(Clone, Debug)]
pub(crate) struct ActorSlots<T> {
    slots: HashMap<Actor, Slot<T>>,
}

impl<T> Default for ActorSlots<T> {
    fn default() -> Self {
        Self { slots: HashMap::default() }
    }
}

impl<T> ActorSlots<T> {
    /// The open value of `actor`.
    #[inline]
    pub(crate) fn get_mut(&mut self, actor: Actor) -> Option<&mut T> {
        self.slots.get_mut(&actor).filter(|s| s.open).map(|s| &mut s.value)
    }

    /// True when `actor` has an open value.
    #[inline]
    pub(crate) fn is_open(&self, actor: Actor) -> bool {
        self.slots.get(&actor).is_some_and(|s| s.open)
    }

    /// Opens `actor`'s slot with `value`; returns the value it replaced when the slot was
    /// open (one lookup either way).
    #[inline]
    pub(crate) fn open(&mut self, actor: Actor, value: T) -> Option<T> {
        match self.slots.get_mut(&actor) {
            Some(slot) => {
                let was_open = std::mem::replace(&mut slot.open, true);
                let previous = std::mem::replace(&mut slot.value, value);
                was_open.then_some(previous)
            }
            None => {
                self.slots.insert(actor, Slot { open: true, value });
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
        let slot = self.slots.entry(actor).or_insert_with(|| Slot { open: false, value: fresh() });
        slot.open = true;
        reset(&mut slot.value);
    }

    /// Closes `actor`'s slot and lends the value it held, when it was open.
    #[inline]
    pub(crate) fn close(&mut self, actor: Actor) -> Option<&mut T> {
        let slot = self.slots.get_mut(&actor).filter(|s| s.open)?;
        slot.open = false;
        Some(&mut slot.value)
    }

    /// The open values.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.values_mut().filter(|s| s.open).map(|s| &mut s.value)
    }

    /// Closes every slot and lends the values that were open, in no particular order.
    pub(crate) fn close_all(&mut self) -> impl Iterator<Item = (Actor, &mut T)> {
        self.slots.iter_mut().filter(|(_, s)| s.open).map(|(actor, s)| {
            s.open = false;
            (*actor, &mut s.value)
        })
    }

    /// Forgets every slot (their buffers too).
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
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
}
