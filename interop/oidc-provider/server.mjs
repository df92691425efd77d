// Starts oidc-provider (an OpenID-certified authorization server) on a loopback port for
// tokenwarden's interop tests.
//
// Everything that checks a client is oidc-provider's own: its client_credentials grant,
// private_key_jwt client authentication (RFC 7523: the assertion's signature against the
// client's registered JWKS, `iss` = `sub` = the client id, `aud`, `exp`, and a `jti` never
// seen before), self_signed_tls_client_auth (RFC 8705: the TLS client certificate against the
// one the client registered) with certificate-bound access tokens, DPoP (RFC 9449: the proof's
// signature, htm, htu, iat, jti and server nonces) with DPoP-bound access tokens, and token
// introspection. This file registers the clients a test names, and serves https when given a
// certificate.
//
// Usage: node server.mjs '<clients JSON>' ['<TLS JSON>' | null] ['<options JSON>'], where the
// clients are a list of
//   {"client_id": "...", "jwk": {public JWK with "alg", and "x5c" for a certificate},
//    "auth": "private_key_jwt" (the default) | "self_signed_tls_client_auth",
//    "dpop_bound_access_tokens": true (only with DPoP on: a token request without a proof fails)}
// the TLS JSON is {"key": "<PEM>", "cert": "<PEM>"}: the server's own key and certificate (null
// or absent: plain http), and the options JSON is
//   {"dpop": false (the default) | true, "require_nonce": false (the default) | true,
//    "ttl": <lifetime of client_credentials tokens in seconds, 300 by default>}
// With "dpop", a token request carrying a DPoP proof gets a DPoP-bound token (token_type DPoP,
// cnf.jkt in introspection); with "require_nonce" too, every proof must carry a nonce the
// server handed out in a DPoP-Nonce header (it asks with a use_dpop_nonce error).
// Prints one JSON line once listening: {"issuer": "..."}. Exits when its standard input
// closes, so it never outlives the test that started it.
import { randomBytes, X509Certificate } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.argv[2] ?? '[]').map((c) => {
  const auth = c.auth ?? 'private_key_jwt';
  return {
    client_id: c.client_id,
    token_endpoint_auth_method: auth,
    ...(c.dpop_bound_access_tokens ? { dpop_bound_access_tokens: true } : {}),
    ...(auth === 'private_key_jwt' ? { token_endpoint_auth_signing_alg: c.jwk.alg } : {}),
    ...(auth === 'self_signed_tls_client_auth'
      ? { tls_client_certificate_bound_access_tokens: true }
      : {}),
    jwks: { keys: [c.jwk] },
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
  };
});
const tls = process.argv[3] ? JSON.parse(process.argv[3]) : null;
const options = JSON.parse(process.argv[4] ?? '{}') ?? {};
const dpop = Boolean(options.dpop);
const requireNonce = dpop && Boolean(options.require_nonce);

const server = tls
  ? https.createServer({ key: tls.key, cert: tls.cert, requestCert: true, rejectUnauthorized: false })
  : http.createServer();
server.listen(0, '127.0.0.1', () => {
  const scheme = tls ? 'https' : 'http';
  const issuer = `${scheme}://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      introspection: { enabled: true },
      dPoP: {
        enabled: dpop,
        // Nonces are derived from this secret and the time (a new one each minute).
        ...(requireNonce ? { nonceSecret: randomBytes(32), requireNonce: () => true } : {}),
      },
      mTLS: {
        enabled: Boolean(tls),
        certificateBoundAccessTokens: true,
        selfSignedTlsClientAuth: true,
        // The certificate the client presented in this request's TLS handshake.
        getCertificate(ctx) {
          const peer = ctx.socket.getPeerCertificate?.();
          return peer && peer.raw ? new X509Certificate(peer.raw) : undefined;
        },
      },
    },
    // The certificate method exists only where there is TLS to present a certificate in.
    clientAuthMethods: tls ? ['private_key_jwt', 'self_signed_tls_client_auth'] : ['private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'],
      dPoPSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'],
    },
    ttl: { ClientCredentials: options.ttl ?? 300 },
  });
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
