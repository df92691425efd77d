//! Choosing a request's key, for layers over a [`KeyedCache`].

use std::fmt;
use std::hash::Hash;

use http::{Extensions, HeaderMap, Method};
use tokenwarden_core::{KeyHandle, KeyedCache, Snapshot};

/// A request's key, for a keyed layer: put it in the request's extensions (tower:
/// `request.extensions_mut().insert(TokenKey(merchant))`; reqwest-middleware:
/// `client.get(url).with_extension(TokenKey(merchant))`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey<K>(pub K);

/// What a key function sees of a request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path (without the query).
    pub path: &'a str,
    /// The headers, as the caller set them.
    pub headers: &'a HeaderMap,
    /// The extensions (for reqwest-middleware: those given with `with_extension`).
    pub extensions: &'a Extensions,
}

impl<'a> RequestView<'a> {
    /// A view of a request's parts.
    #[must_use]
    pub fn new(
        method: &'a Method,
        path: &'a str,
        headers: &'a HeaderMap,
        extensions: &'a Extensions,
    ) -> Self {
        Self {
            method,
            path,
            headers,
            extensions,
        }
    }
}

/// Which cache a request of a keyed engine takes its token from.
#[derive(Debug)]
pub enum Choice {
    /// The engine has one cache: that one.
    Engine,
    /// The cache of the request's key (held for the request's life: the key is not evicted
    /// meanwhile), with its token when one can be served now (else fetch it from the cache).
    Key(KeyHandle, Option<Snapshot>),
    /// The request already carries its key's headers: the caller's own credentials, sent
    /// untouched.
    OwnCredentials,
}

/// A request to a keyed layer that cannot get a token: refused before anything is sent, so
/// that no request ever goes out with another key's token or with none.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The request has no key.
    #[error(
        "the request has no token key: put a TokenKey in its extensions (or give the layer a key \
         function that finds one); it was not sent"
    )]
    Missing,
    /// The request has a [`TokenKey`] of another type than the layer's keys (a
    /// `TokenKey(&str)` for a `KeyedCache<String>`): it counts as none.
    #[error(
        "the request's TokenKey is of the wrong type: it holds a {found}, the layer's keys are \
         {expected} (put a TokenKey<{expected}> in its extensions); it was not sent"
    )]
    WrongType {
        /// The layer's key type.
        expected: &'static str,
        /// The type the request's `TokenKey` holds.
        found: &'static str,
    },
    /// There is no cache for its key (unknown, or its settings cannot work).
    #[error("no token cache for the request's key; it was not sent")]
    Cache(#[source] tokenwarden_core::Error),
}

/// Chooses a request's cache: what a keyed [`Engine`](crate::adapter::Engine) asks per request. Made by
/// [`by_extension`] or [`by_key`].
pub trait ChooseCache: fmt::Debug + Send + Sync + 'static {
    /// The cache of `request`'s key, with its token when one can be served now (see
    /// [`KeyedCache::handle_with_token`]).
    ///
    /// # Errors
    ///
    /// [`KeyError`]: no key, or no cache for it.
    fn choose(&self, request: &RequestView<'_>) -> Result<(KeyHandle, Option<Snapshot>), KeyError>;
}

/// Keys from the request's [`TokenKey<K>`] extension.
#[must_use]
pub fn by_extension<K>(keyed: KeyedCache<K>) -> impl ChooseCache
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
{
    ByExtension { keyed }
}

struct ByExtension<K: Send> {
    keyed: KeyedCache<K>,
}

impl<K> fmt::Debug for ByExtension<K>
where
    K: Clone + Hash + Eq + Send,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByExtension")
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

impl<K> ChooseCache for ByExtension<K>
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
{
    fn choose(&self, request: &RequestView<'_>) -> Result<(KeyHandle, Option<Snapshot>), KeyError> {
        let Some(TokenKey(key)) = request.extensions.get::<TokenKey<K>>() else {
            return Err(missing::<K>(request.extensions));
        };
        self.keyed.handle_with_token(key).map_err(KeyError::Cache)
    }
}

/// No `TokenKey<K>`: [`KeyError::WrongType`] if the request has a `TokenKey` of a common key
/// type other than `K` (looked for only on this failing path), else [`KeyError::Missing`].
fn missing<K: 'static>(extensions: &Extensions) -> KeyError {
    fn holds<T: Clone + Send + Sync + 'static>(extensions: &Extensions) -> Option<&'static str> {
        extensions
            .get::<TokenKey<T>>()
            .map(|_| std::any::type_name::<T>())
    }
    let found = holds::<&'static str>(extensions)
        .or_else(|| holds::<String>(extensions))
        .or_else(|| holds::<std::sync::Arc<str>>(extensions))
        .or_else(|| holds::<Box<str>>(extensions))
        .or_else(|| holds::<u64>(extensions))
        .or_else(|| holds::<u32>(extensions))
        .or_else(|| holds::<usize>(extensions))
        .or_else(|| holds::<i64>(extensions))
        .or_else(|| holds::<i32>(extensions));
    match found {
        Some(found) => KeyError::WrongType {
            expected: std::any::type_name::<K>(),
            found,
        },
        None => KeyError::Missing,
    }
}

/// Keys from a function of the request (a header, a path segment, an extension of your own).
/// `None` refuses the request ([`KeyError::Missing`]).
#[must_use]
pub fn by_key<K, F>(keyed: KeyedCache<K>, key: F) -> impl ChooseCache
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
    F: Fn(&RequestView<'_>) -> Option<K> + Send + Sync + 'static,
{
    ByKey { keyed, key }
}

struct ByKey<K: Send, F> {
    keyed: KeyedCache<K>,
    key: F,
}

impl<K, F> fmt::Debug for ByKey<K, F>
where
    K: Clone + Hash + Eq + Send,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByKey")
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

impl<K, F> ChooseCache for ByKey<K, F>
where
    K: Clone + Hash + Eq + Send + Sync + 'static,
    F: Fn(&RequestView<'_>) -> Option<K> + Send + Sync + 'static,
{
    fn choose(&self, request: &RequestView<'_>) -> Result<(KeyHandle, Option<Snapshot>), KeyError> {
        let key = (self.key)(request).ok_or(KeyError::Missing)?;
        self.keyed.handle_with_token(&key).map_err(KeyError::Cache)
    }
}
