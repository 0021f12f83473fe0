//! Per-thread scratch buffers kept between calls.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Runs `f` on the calling thread's value in `key`, kept between calls
/// (a product's activations or outputs are megabytes, and a fresh zeroed
/// buffer per call was a serial memset), or on a fresh default one when
/// this thread is already inside `f` for `key` (it took a job of another
/// call while waiting on its pool), so a re-entry never panics.
pub(crate) fn with_scratch<T: Default, R>(
    key: &'static LocalKey<RefCell<T>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => f(&mut kept),
        Err(_) => f(&mut T::default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static KEPT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    }

    /// The value is kept between calls; a nested call gets a fresh one.
    #[test]
    fn kept_between_calls_and_fresh_when_reentered() {
        with_scratch(&KEPT, |v| v.push(7));
        let inner = with_scratch(&KEPT, |outer| {
            outer.push(8);
            with_scratch(&KEPT, |fresh| {
                fresh.push(1);
                fresh.clone()
            })
        });
        assert_eq!(inner, vec![1]);
        assert_eq!(with_scratch(&KEPT, |v| v.clone()), vec![7, 8]);
    }
}
