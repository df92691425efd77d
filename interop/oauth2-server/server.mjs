// Starts oauth2-mock-server on a loopback port for tokenwarden's interop tests, plus a small
// control endpoint on another port through which a test sets what the server does.
//
// The token endpoint, its JWTs (RS256, signed with a key generated at start) and its JWKS are
// oauth2-mock-server's own. This file only configures it through its documented hooks:
// - client authentication is checked (client_secret_basic, RFC 6749 §2.3.1: form-encoded id
//   and secret; or client_secret_post), and `invalid_client` answered otherwise;
// - scopes outside the allowed set are answered with `invalid_scope`, resources outside the
//   allowed set with `invalid_target` (RFC 8707);
// - `audience` / `resource` become the token's `aud`, the client id its `client_id` claim,
//   and every token gets a `jti`;
// - the token lifetime, the shape of `expires_in` (and seconds it adds to the JWT's lifetime)
//   and `token_type` are settable; a failed client authentication can echo the secret it was
//   given in its `error_description`, as some servers do;
// - answers can be scripted (status, body, headers such as Retry-After) for the next calls;
// - every token request is recorded (how the client authenticated, what it asked for, when).
//
// Prints one JSON line once listening: {"issuer": "...", "control": "..."}. Exits when its
// standard input closes, so it never outlives the test that started it.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { OAuth2Server } from 'oauth2-mock-server';

const defaults = () => ({
  clients: { app: 's3cr3t' },
  allowedScopes: null,
  ttl: 3600,
  expiresIn: 'number', // 'number' | 'string' | 'absent'
  expiresInExtra: 0, // seconds `expires_in` says beyond the JWT's own `exp`
  tokenType: 'Bearer',
  allowedResources: null,
  echoCredentials: false,
});
let config = defaults();
let script = [];
let requests = [];

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

function authenticate(req) {
  const header = req.headers['authorization'];
  if (header && header.startsWith('Basic ')) {
    const decoded = Buffer.from(header.slice(6), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return { method: 'basic', id: null, ok: false };
    const form = (s) => decodeURIComponent(s.replace(/\+/g, ' '));
    try {
      const id = form(decoded.slice(0, colon));
      const secret = form(decoded.slice(colon + 1));
      return { method: 'basic', id, secret, ok: config.clients[id] === secret };
    } catch {
      // Not form-encoded as RFC 6749 §2.3.1 requires: the client is not authenticated.
      return { method: 'basic', id: null, ok: false };
    }
  }
  const body = req.body || {};
  if (body.client_id !== undefined && body.client_secret !== undefined) {
    return {
      method: 'post',
      id: body.client_id,
      secret: body.client_secret,
      ok: config.clients[body.client_id] === body.client_secret,
    };
  }
  return { method: 'none', id: body.client_id ?? null, ok: false };
}

server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body || {};
  token.payload.exp = token.payload.iat + config.ttl;
  // A token id, as most servers issue: without it, two tokens signed in the same second for
  // the same client are the same bytes (RS256 signatures are deterministic).
  token.payload.jti = randomUUID();
  const audience = body.audience ?? body.resource;
  if (audience !== undefined) token.payload.aud = audience;
  const auth = authenticate(req);
  if (auth.id) token.payload.client_id = auth.id;
});

server.service.on('beforeResponse', (response, req) => {
  const body = req.body || {};
  const auth = authenticate(req);
  requests.push({
    at: Date.now(),
    method: auth.method,
    client_id: auth.id,
    grant_type: body.grant_type ?? null,
    scope: body.scope ?? null,
    audience: body.audience ?? null,
    resource: body.resource ?? null,
    content_type: req.headers['content-type'] ?? null,
  });
  const scripted = script.shift();
  if (scripted) {
    response.statusCode = scripted.status;
    response.body = scripted.body ?? {};
    for (const [name, value] of Object.entries(scripted.headers ?? {})) {
      req.res.set(name, value);
    }
    return;
  }
  if (!auth.ok) {
    response.statusCode = 401;
    req.res.set('WWW-Authenticate', 'Basic realm="token"');
    response.body = {
      error: 'invalid_client',
      error_description:
        config.echoCredentials && auth.secret !== undefined
          ? `Client authentication failed: secret ${auth.secret} is not the one registered`
          : 'Client authentication failed',
    };
    return;
  }
  if (config.allowedResources && body.resource !== undefined) {
    const resources = [].concat(body.resource);
    const refused = resources.filter((r) => !config.allowedResources.includes(r));
    if (refused.length > 0) {
      response.statusCode = 400;
      response.body = {
        error: 'invalid_target',
        error_description: `The resource ${refused.join(' ')} is not served here`,
      };
      return;
    }
  }
  if (config.allowedScopes && body.scope) {
    const refused = body.scope.split(' ').filter((s) => !config.allowedScopes.includes(s));
    if (refused.length > 0) {
      response.statusCode = 400;
      response.body = {
        error: 'invalid_scope',
        error_description: `The scope ${refused.join(' ')} is not allowed for this client`,
      };
      return;
    }
  }
  if (response.statusCode === 200) {
    response.body.token_type = config.tokenType;
    const expiresIn = config.ttl + config.expiresInExtra;
    if (config.expiresIn === 'string') response.body.expires_in = String(expiresIn);
    else if (config.expiresIn === 'absent') delete response.body.expires_in;
    else response.body.expires_in = expiresIn;
  }
});

await server.start(0, '127.0.0.1');
const port = server.address().port;

const read = (req) =>
  new Promise((resolve) => {
    let data = '';
    req.on('data', (chunk) => (data += chunk));
    req.on('end', () => resolve(data ? JSON.parse(data) : {}));
  });

const control = http.createServer(async (req, res) => {
  try {
    const input = req.method === 'POST' ? await read(req) : {};
    let answer = {};
    switch (req.url) {
      case '/config':
        config = { ...config, ...input };
        break;
      case '/script':
        script.push(...input.responses);
        break;
      case '/requests':
        answer = requests;
        break;
      case '/reset':
        config = defaults();
        script = [];
        requests = [];
        break;
      case '/stop':
        if (server.listening) await server.stop();
        break;
      case '/start':
        if (!server.listening) {
          await server.start(port, '127.0.0.1');
        }
        break;
      default:
        res.writeHead(404).end();
        return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
  } catch (error) {
    res.writeHead(500).end(String(error));
  }
});
control.listen(0, '127.0.0.1', () => {
  process.stdout.write(
    JSON.stringify({
      issuer: server.issuer.url,
      control: `http://127.0.0.1:${control.address().port}`,
    }) + '\n',
  );
});

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
