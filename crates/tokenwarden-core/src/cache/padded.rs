//! [`Padded`]: a value on cache lines of its own.

/// Keeps each thread's slot on cache lines of its own: `ThreadLocal` stores the slots of
/// consecutive threads side by side, and a write to one would otherwise slow the others.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);
