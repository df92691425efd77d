//! Whether `https` can be spoken at all: the TLS backend of the reqwest in this build.

/// Whether the reqwest in this build has a TLS backend — any, whichever crate's features
/// turned it on (the `rustls` feature of tokenwarden-reqwest or tokenwarden-gateways, the
/// application's `reqwest/native-tls`, …). Every crate of a build shares one reqwest, so the
/// answer holds for every reqwest client in it: the HTTP layer and the issuer client ask here.
///
/// reqwest says so nowhere at run time, but its `ClientBuilder::tls_info` exists only with a
/// TLS backend, and where a type has an inherent method of a name, a trait method of the same
/// name is not chosen. So `tls_info` below is reqwest's own (returning a `ClientBuilder`) when
/// it exists, else `NoTls`'s (returning `NoTlsBackend`): decided when this crate is compiled.
/// The closure is never called.
#[must_use]
pub fn reqwest_has_tls() -> bool {
    #[allow(dead_code)] // used only where reqwest has no TLS backend
    struct NoTlsBackend;
    #[allow(dead_code)]
    trait NoTls {
        fn tls_info(self, on: bool) -> NoTlsBackend;
    }
    impl NoTls for reqwest::ClientBuilder {
        fn tls_info(self, _: bool) -> NoTlsBackend {
            NoTlsBackend
        }
    }
    trait Backend {
        const TLS: bool;
    }
    impl Backend for reqwest::ClientBuilder {
        const TLS: bool = true;
    }
    impl Backend for NoTlsBackend {
        const TLS: bool = false;
    }
    fn answer<T: Backend>(_: fn(reqwest::ClientBuilder) -> T) -> bool {
        T::TLS
    }
    answer(|builder: reqwest::ClientBuilder| builder.tls_info(false))
}
