//! Counts of the expensive operations one message causes, so tests can
//! check the stated cost bound of an unauthenticated message
//! ([`crate::state::MAX_CHAIN_STEPS_PER_MESSAGE`] and the bounds in
//! `session.rs`) by counting rather than timing. In non-test builds every
//! count is an empty inline function.

/// An operation whose count the cost bound states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// One X25519 scalar multiplication (an agreement or a public key).
    X25519,
    /// One symmetric chain step (`ChainKey::next`, one HMAC-SHA256).
    ChainStep,
    /// One message-key derivation (HMAC-SHA256 and an 80-byte HKDF).
    MessageKeys,
    /// One copy of a whole session state.
    StateClone,
}

#[cfg(not(test))]
#[inline(always)]
pub(crate) fn count(_op: Op) {}

#[cfg(test)]
pub(crate) use counting::{count, Counts};

#[cfg(test)]
mod counting {
    use super::Op;
    use std::cell::Cell;

    thread_local! {
        static COUNTS: Cell<Counts> = const { Cell::new(Counts { x25519: 0, chain_steps: 0, message_keys: 0, state_clones: 0 }) };
    }

    /// Operations counted on this thread since the last [`Counts::take`].
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub(crate) struct Counts {
        pub x25519: u64,
        pub chain_steps: u64,
        pub message_keys: u64,
        pub state_clones: u64,
    }

    impl Counts {
        /// The counts so far, resetting them to zero.
        pub(crate) fn take() -> Counts {
            COUNTS.with(|c| c.replace(Counts::default()))
        }
    }

    pub(crate) fn count(op: Op) {
        COUNTS.with(|c| {
            let mut n = c.get();
            match op {
                Op::X25519 => n.x25519 += 1,
                Op::ChainStep => n.chain_steps += 1,
                Op::MessageKeys => n.message_keys += 1,
                Op::StateClone => n.state_clones += 1,
            }
            c.set(n);
        });
    }
}
