//! The token value, its expiry and its identity.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::Extensions;

use crate::Secret;

/// Identifies one token installed by a cache: every token any cache of the process hands
/// out gets a new, increasing id, so an id never names tokens of two caches (or of one cache
/// before and after its credentials were rotated). Layers remember the id a request carried
/// and pass it to [`TokenCache::invalidate`](crate::TokenCache::invalidate) when that request
/// is rejected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(pub(crate) u64);

impl TokenId {
    /// A new id, never handed out before in this process.
    pub(crate) fn next() -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }

    /// The raw number (for logs and metrics).
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// When a token stops being valid, as its issuer stated it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// The issuer said nothing: the cache applies its default lifetime
    /// ([`with_default_lifetime`](crate::TokenCacheBuilder::with_default_lifetime)), never "forever".
    #[default]
    Unknown,
    /// Valid for this long, counted from the moment the fetch was sent.
    In(Duration),
    /// Valid until this wall-clock instant (a JWT `exp`, an `expires_at` field).
    At(SystemTime),
}

/// A token as a [`TokenSource`](crate::TokenSource) returns it: the secret value, its
/// expiry and any gateway metadata (for example Sipay's `is_3d`).
///
/// `Debug` and `Display` never show the secret.
///
/// ```
/// use std::time::Duration;
/// use tokenwarden_core::Token;
///
/// #[derive(Clone, Debug, PartialEq)]
/// struct Is3d(u8);
///
/// let token = Token::new("eyJhbGciOi...")
///     .with_expires_in(Duration::from_secs(900))
///     .with_metadata(Is3d(2));
/// assert_eq!(token.metadata::<Is3d>(), Some(&Is3d(2)));
/// assert!(!format!("{token:?}").contains("eyJ"));
/// ```
#[derive(Clone)]
pub struct Token {
    secret: Secret,
    expiry: Expiry,
    metadata: Extensions,
    id: TokenId,
}

impl Token {
    /// A token with this secret value and no stated expiry.
    pub fn new(secret: impl Into<Secret>) -> Self {
        Self {
            secret: secret.into(),
            expiry: Expiry::Unknown,
            metadata: Extensions::new(),
            id: TokenId::default(),
        }
    }

    /// Sets the expiry as a lifetime counted from when the fetch was sent.
    #[must_use]
    pub fn with_expires_in(mut self, lifetime: Duration) -> Self {
        self.expiry = Expiry::In(lifetime);
        self
    }

    /// Sets the expiry as a wall-clock instant.
    #[must_use]
    pub fn with_expires_at(mut self, at: SystemTime) -> Self {
        self.expiry = Expiry::At(at);
        self
    }

    /// Sets the expiry.
    #[must_use]
    pub fn with_expiry(mut self, expiry: Expiry) -> Self {
        self.expiry = expiry;
        self
    }

    /// Attaches a piece of metadata, replacing any of the same type.
    #[must_use]
    pub fn with_metadata<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.metadata.insert(value);
        self
    }

    /// The secret value.
    #[must_use]
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The expiry the issuer stated.
    #[must_use]
    pub fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// Metadata of type `T`, if the source attached any.
    #[must_use]
    pub fn metadata<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.metadata.get::<T>()
    }

    /// All metadata.
    #[must_use]
    pub fn extensions(&self) -> &Extensions {
        &self.metadata
    }

    /// The id the cache gave this token when it installed it (`#0` before that).
    #[must_use]
    pub fn id(&self) -> TokenId {
        self.id
    }

    pub(crate) fn set_secret(&mut self, secret: Secret) {
        self.secret = secret;
    }

    pub(crate) fn set_id(&mut self, id: TokenId) {
        self.id = id;
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("secret", &self.secret)
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {}", self.id)
    }
}
