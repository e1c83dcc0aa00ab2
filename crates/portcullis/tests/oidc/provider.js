// The OpenID provider of the portcullis OIDC tests: the certified `oidc-provider` package on
// 127.0.0.1, on a port the OS picks.
//
// Protocol with the test, one JSON object per line:
// 1. This script listens and writes `{"issuer": "http://127.0.0.1:PORT"}` to stdout. Until
//    step 2 every request gets 503, as from an unavailable provider.
// 2. The test writes the settings to stdin: `{"clients": [...], "access_token_ttl": N}`, where
//    `clients` is oidc-provider client metadata. This script builds the provider and writes
//    `{"ready": true}`.
//
// `GET /test/events` returns how many grants of each `grant_type` succeeded, so a test can see
// that the gateway refreshed a token. Accounts need no registration: the development login form
// accepts any login name as the subject and any password.

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';

import Provider from 'oidc-provider';

// The resource server whose access tokens are JWTs, for the bearer-token tests.
const API_RESOURCE = 'urn:portcullis:api';

const grants = {};
let handler = (request, response) => {
  response.statusCode = 503;
  response.end('the provider is not configured yet');
};

const server = createServer((request, response) => {
  if (request.method === 'GET' && request.url === '/test/events') {
    response.setHeader('content-type', 'application/json');
    response.end(JSON.stringify({ grants }));
    return;
  }
  handler(request, response);
});

function build(issuer, settings) {
  const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 })
    .privateKey.export({ format: 'jwk' });
  const jwks = { keys: [{ ...signingKey, kid: 'test-rs256', use: 'sig', alg: 'RS256' }] };
  const provider = new Provider(issuer, {
    clients: settings.clients,
    jwks,
    cookies: { keys: ['portcullis-test-provider-cookie-key'] },
    pkce: { required: () => true },
    // Put the claims of the granted scopes, such as `email`, in the ID token as well as in the
    // userinfo response, as many providers do.
    conformIdTokenClaims: false,
    scopes: ['openid', 'offline_access', 'profile', 'email', 'api'],
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    ttl: {
      AccessToken: settings.access_token_ttl ?? 3600,
      ClientCredentials: settings.access_token_ttl ?? 3600,
      IdToken: 3600,
      RefreshToken: 86400,
    },
    // Issue a refresh token to every client allowed the grant, without `offline_access`.
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: `${id}@example.test`, email_verified: true, name: id };
        },
      };
    },
    features: {
      devInteractions: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      clientCredentials: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Only a client that asks for the API resource gets JWT access tokens, so the tokens
        // of every other client stay opaque and can be introspected.
        defaultResource: async () => undefined,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          if (resource !== API_RESOURCE) {
            throw new Error(`unknown resource ${resource}`);
          }
          return {
            scope: 'api',
            audience: API_RESOURCE,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  provider.on('grant.success', (ctx) => {
    const type = ctx.oidc.params.grant_type;
    grants[type] = (grants[type] ?? 0) + 1;
  });
  provider.on('server_error', (ctx, error) => {
    process.stderr.write(`oidc-provider server error: ${error.stack}\n`);
  });
  return provider;
}

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);

  const lines = createInterface({ input: process.stdin });
  lines.once('line', (line) => {
    const provider = build(issuer, JSON.parse(line));
    handler = provider.callback();
    process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  });
  // The test closes stdin when it drops the provider; stop with it.
  lines.on('close', () => process.exit(0));
});
