// A real OpenID provider for the single sign-on end-to-end test: the `oidc-provider`
// package (its own login and consent pages), on 127.0.0.1 at a port the system picks.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"client_id", "client_secret", "users_file"}. USERS_FILE: {"<login>": {"email",
// "groups": [...]}} — read at every sign-in, so a test changes a user's groups between two
// sign-ins by rewriting it. Prints `ISSUER http://127.0.0.1:<port>` once it listens, and
// `ROTATED <kid>` after SIGUSR2, which replaces its signing key by a new one (key
// rotation: tokens from then on name a key id the relying party has not seen).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const users = () => JSON.parse(readFileSync(config.users_file, 'utf8'));

let generation = 0;
function signingKey() {
  generation += 1;
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `key-${generation}-${randomBytes(4).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

function provider(issuer, key) {
  const p = new Provider(issuer, {
    clients: [{
      client_id: config.client_id,
      client_secret: config.client_secret,
      application_type: 'native',
      redirect_uris: ['http://127.0.0.1/callback'],
      grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [key] },
    cookies: { keys: [randomBytes(16).toString('hex')] },
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username'],
      email: ['email'],
      groups: ['groups'],
    },
    // The claims the scopes grant go into the ID token, which is all BAMF reads.
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    features: { deviceFlow: { enabled: true } },
    async findAccount(_ctx, sub) {
      const user = users()[sub];
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, preferred_username: sub, email: user.email, groups: user.groups ?? [] };
        },
      };
    },
  });
  p.on('server_error', (_ctx, err) => console.error('provider error:', err));
  return p;
}

const server = createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  let handler = provider(issuer, signingKey()).callback();
  server.on('request', (req, res) => handler(req, res));
  process.on('SIGUSR2', () => {
    const key = signingKey();
    handler = provider(issuer, key).callback();
    console.log(`ROTATED ${key.kid}`);
  });
  console.log(`ISSUER ${issuer}`);
});
process.on('SIGTERM', () => process.exit(0));
