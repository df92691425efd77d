// Starts oidc-provider (an OpenID-certified authorization server) on a loopback port for
// tokenwarden's interop tests.
//
// Everything that checks a client is oidc-provider's own: its client_credentials grant, and
// private_key_jwt client authentication (RFC 7523: the assertion's signature against the
// client's registered JWKS, `iss` = `sub` = the client id, `aud`, `exp`, and a `jti` never
// seen before). This file only registers the clients a test names.
//
// Usage: node server.mjs '<clients JSON>', where the JSON is a list of
//   {"client_id": "...", "jwk": {public JWK with "alg"}}.
// Prints one JSON line once listening: {"issuer": "..."}. Exits when its standard input
// closes, so it never outlives the test that started it.
import http from 'node:http';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.argv[2] ?? '[]').map((c) => ({
  client_id: c.client_id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: c.jwk.alg,
  jwks: { keys: [c.jwk] },
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
}));

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients,
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
    },
    clientAuthMethods: ['private_key_jwt'],
    enabledJWA: {
      clientAuthSigningAlgValues: ['RS256', 'PS256', 'ES256', 'EdDSA'],
    },
    ttl: { ClientCredentials: 300 },
  });
  // Errors are answered to the client; they need not be logged here as well.
  provider.on('server_error', (_ctx, error) => console.error('server_error', error));
  server.on('request', provider.callback());
  console.log(JSON.stringify({ issuer }));
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
