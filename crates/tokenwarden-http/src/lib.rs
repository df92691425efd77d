//! The HTTP side of tokenwarden, written once: which requests get a token, what an answer says
//! about the token it carried, and the replay after a rejection.
//!
//! The tower layer (`tokenwarden-tower`) and the reqwest middleware (`tokenwarden-reqwest`)
//! are thin adapters over [`Engine`](adapter::Engine): they convert their request, response and body types and
//! send; every decision is made here, so the two behave the same by construction.
//!
//! - [`LayerPolicy`]: the scope, the [`Classifier`], the body caps and the inspection time.
//! - [`adapter`]: for writing an adapter — [`Engine`](adapter::Engine), the per-request
//!   algorithm, step by step, and [`Recover`](adapter::Recover), its rejection path.
//! - [`Replay`] / [`NotReplayed`]: what a response says about the replay, in its extensions.
//! - [`SkipToken`]: the per-request opt-out.
//! - [`ResponseBody`]: the body callers receive (the inner body, or the bytes read ahead and
//!   then the rest).
//! - [`RequestBody`]: a request body copied aside as it is sent, up to the replay cap, for
//!   bodies that cannot be cloned (streams).
//!
//! It is a crate of its own so that `tokenwarden-core` stays about the cache, with no body or
//! response types in it, and so that both adapters depend on one engine rather than on each
//! other.
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, rust_2018_idioms, unreachable_pub)]

mod body;
mod engine;
mod keys;
pub mod metrics;
mod policy;
mod request;

pub use body::ResponseBody;
pub use keys::{KeyError, RequestView, TokenKey};
pub use policy::{
    Classifier, DefaultClassifier, LayerPolicy, NotReplayed, Replay, SkipToken, Verdict,
};
pub use request::RequestBody;

/// For writing an adapter (a layer for another HTTP client), as `tokenwarden-tower` and
/// `tokenwarden-reqwest` are written: the per-request [`Engine`](adapter::Engine) and its
/// rejection path, the cache choice of a keyed engine, the body kept aside for a replay, and
/// how long a rejected body is drained. An application using a layer needs none of it.
pub mod adapter {
    pub use crate::body::{DRAIN_LIMIT, DRAIN_TIME};
    pub use crate::engine::{Engine, Recover, Recovered};
    pub use crate::keys::{Choice, ChooseCache, by_extension, by_key};
    pub use crate::request::KeptBody;
}
