// Starts oidc-provider (an OpenID-certified authorization server) on a loopback port for
// tokenwarden's interop tests.
//
// Everything that checks a client is oidc-provider's own: its client_credentials grant,
// private_key_jwt client authentication (RFC 7523: the assertion's signature against the
// client's registered JWKS, `iss` = `sub` = the client id, `aud`, `exp`, and a `jti` never
// seen before), self_signed_tls_client_auth (RFC 8705: the TLS client certificate against the
// one the client registered) with certificate-bound access tokens, and token introspection.
// This file registers the clients a test names, and serves https when given a certificate.
//
// Usage: node server.mjs '<clients JSON>' ['<TLS JSON>'], where the clients are a list of
//   {"client_id": "...", "jwk": {public JWK with "alg", and "x5c" for a certificate},
//    "auth": "private_key_jwt" (the default) | "self_signed_tls_client_auth"}
// and the TLS JSON is {"key": "<PEM>", "cert": "<PEM>"}: the server's own key and certificate.
// Prints one JSON line once listening: {"issuer": "..."}. Exits when its standard input
// closes, so it never outlives the test that started it.
import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.argv[2] ?? '[]').map((c) => {
  const auth = c.auth ?? 'private_key_jwt';
  return {
    client_id: c.client_id,
    token_endpoint_auth_method: auth,
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
    },
    ttl: { ClientCredentials: 300 },
  });
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
