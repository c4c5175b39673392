// A real OpenID Connect provider on loopback for the login tests: npm's
// oidc-provider (an OpenID-certified implementation), run by node.
//
//   node tests/oidc_provider.mjs '<json settings>'
//
// settings: {"port": N, "clients": [{client_id, client_secret, redirect_uris}],
//            "accounts": {"<login>": {"groups": [...]}}, "access_token_ttl": seconds}
// Its own login page (oidc-provider's devInteractions: any password) signs in a
// login of "accounts"; the user info carries preferred_username, name and groups
// ("groups" scope).  Every code grant also issues a refresh token, and access tokens
// expire after access_token_ttl seconds, so refreshes can be tested.
// Prints "oidc-provider listening <issuer>" once it accepts connections.
import Provider from "oidc-provider";

const settings = JSON.parse(process.argv[2]);
const issuer = `http://127.0.0.1:${settings.port}`;
const accounts = settings.accounts || {};

const provider = new Provider(issuer, {
  clients: settings.clients.map((client) => ({
    grant_types: ["authorization_code", "refresh_token"],
    response_types: ["code"],
    token_endpoint_auth_method: "client_secret_basic",
    ...client,
  })),
  async findAccount(_ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, groups: accounts[id].groups || [] };
      },
    };
  },
  claims: {
    openid: ["sub"],
    profile: ["preferred_username", "name"],
    groups: ["groups"],
  },
  scopes: ["openid", "offline_access", "profile", "groups"],
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed("refresh_token");
  },
  ttl: {
    AccessToken: settings.access_token_ttl || 3600,
    IdToken: 3600,
    RefreshToken: 86400,
  },
  cookies: { keys: ["binderbox-tests-oidc-provider-cookie-key"] },
  features: { devInteractions: { enabled: true } },
});
provider.on("server_error", (_ctx, err) => console.error("server_error", err));
provider.on("grant.error", (_ctx, err) => console.error("grant.error", err.message));

const server = provider.listen(settings.port, "127.0.0.1", () => {
  console.log(`oidc-provider listening ${issuer}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
