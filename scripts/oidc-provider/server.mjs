// A real OpenID Connect provider for the tests, on loopback: oauth2-mock-server (npm;
// discovery, JWKS, authorization code flow with PKCE, RS256 ID tokens, userinfo) behind
// a small login page, with knobs a test needs to see the messenger refuse bad tokens.
//
// Usage: node server.mjs <node_modules dir>   (scripts/oidc-provider.sh installs it)
// Prints one JSON line {"issuer": "http://127.0.0.1:<port>"} once it listens, and exits
// when its standard input closes (the test that started it ended).
//
// The login page (GET /authorize without `login`) asks for a user name. Submitting it
// (GET /authorize?...&login=<name>) signs in as that user: subject "sub-<name>",
// preferred_username <name>, email <name>@example.com (verified). Extra parameters on
// that request change what this sign-in's tokens say:
//   email=<address>         another email;  email_verified=false  an unverified one
//   id_token=wrong_audience | expired | foreign_key   a bad ID token of that kind
//   cancel=1                the user cancels: the callback gets error=access_denied
// POST /_control/rotate-keys adds a new signing key (tokens then use the new one).
// The userinfo endpoint answers GitHub-style {id, login, email} for the token's user.
// Authorization codes are single-use.

import crypto from "node:crypto";
import http from "node:http";
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
if (!modules) {
  console.error("usage: node server.mjs <node_modules dir>");
  process.exit(2);
}
const load = (name, file) => import(pathToFileURL(path.join(modules, name, file)).href);
const { OAuth2Server } = await load("oauth2-mock-server", "dist/index.mjs");
const jose = await load("jose", "dist/webapi/index.js");

const server = new OAuth2Server();
/** The key new tokens are signed with; older ones stay published. */
let signingKid = (await server.issuer.keys.generate("RS256")).kid;
const keyById = server.issuer.keys.get.bind(server.issuer.keys);
server.issuer.keys.get = (kid) => keyById(kid ?? signingKid);
const { privateKey: foreignKey } = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 });

/** What each issued code signs in as: code -> {login, email, email_verified, id_token}. */
const grants = new Map();
/** Codes already exchanged. */
const used = new Set();
/** Access token subject -> user, for userinfo. */
const users = new Map();

function userFor(query) {
  const login = String(query.login);
  return {
    login,
    sub: `sub-${login}`,
    email: query.email ? String(query.email) : `${login}@example.com`,
    email_verified: query.email_verified !== "false",
    id_token: query.id_token ? String(query.id_token) : "valid",
  };
}

server.service.on("beforeAuthorizeRedirect", (redirect, req) => {
  const code = redirect.url.searchParams.get("code");
  if (req.query.cancel) {
    redirect.url.searchParams.delete("code");
    redirect.url.searchParams.set("error", "access_denied");
    redirect.url.searchParams.set("error_description", "The user cancelled the sign-in");
    return;
  }
  if (code) grants.set(code, userFor(req.query));
});

server.service.on("beforeTokenSigning", (token, req) => {
  const user = grants.get(req.body?.code);
  if (!user) return;
  token.payload.sub = user.sub;
  users.set(user.sub, user);
  // Only the ID token has an audience (the client id) in an authorization code grant.
  if (token.payload.aud === undefined) return;
  Object.assign(token.payload, {
    email: user.email,
    email_verified: user.email_verified,
    preferred_username: user.login,
  });
  const now = Math.floor(Date.now() / 1000);
  if (user.id_token === "wrong_audience") token.payload.aud = "some-other-client";
  if (user.id_token === "expired") {
    token.payload.iat = now - 3900;
    token.payload.nbf = now - 3900;
    token.payload.exp = now - 300;
  }
});

// Synchronous on purpose: the server sends the response right after emitting the event,
// without waiting for what an async listener would still be doing.
server.service.on("beforeResponse", (response, req) => {
  const code = req.body?.code;
  if (req.body?.grant_type === "authorization_code") {
    if (!grants.has(code) || used.has(code)) {
      response.statusCode = 400;
      response.body = { error: "invalid_grant", error_description: "the code is unknown or used" };
      return;
    }
    used.add(code);
  }
  const user = grants.get(code);
  if (user?.id_token === "foreign_key" && response.body.id_token) {
    // Same header (key id) and claims, but signed (RS256) by a key the provider never
    // published.
    const [header, payload] = response.body.id_token.split(".");
    const signature = crypto.sign("sha256", Buffer.from(`${header}.${payload}`), foreignKey);
    response.body.id_token = `${header}.${payload}.${signature.toString("base64url")}`;
  }
});

server.service.on("beforeUserinfo", (response, req) => {
  const bearer = (req.headers.authorization || "").replace(/^Bearer /, "");
  let user;
  try {
    user = users.get(jose.decodeJwt(bearer).sub);
  } catch {
    user = undefined;
  }
  if (!user) {
    response.statusCode = 401;
    response.body = { error: "invalid_token" };
    return;
  }
  const id = [...user.sub].reduce((n, c) => (n * 31 + c.charCodeAt(0)) % 1_000_000_007, 7);
  response.body = { id, login: user.login, email: user.email };
});

const escape = (text) =>
  String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(url) {
  const hidden = [...url.searchParams]
    .map(([k, v]) => `<input type="hidden" name="${escape(k)}" value="${escape(v)}">`)
    .join("\n");
  return `<!doctype html><html><head><meta charset="utf-8"><title>Test provider: sign in</title></head>
<body><h1>Test provider</h1><form method="get" action="/authorize">
${hidden}
<label>User name <input id="login" name="login" autocomplete="username" required></label>
<button id="sign-in" type="submit">Sign in</button>
<button id="cancel" type="submit" name="cancel" value="1" formnovalidate>Cancel</button>
</form></body></html>`;
}

const app = server.service.requestHandler;
const front = http.createServer((req, res) => {
  const url = new URL(req.url, "http://127.0.0.1");
  if (req.method === "GET" && url.pathname === "/authorize" && !url.searchParams.has("login") && !url.searchParams.has("cancel")) {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(loginPage(url));
    return;
  }
  if (req.method === "POST" && url.pathname === "/_control/rotate-keys") {
    server.issuer.keys
      .generate("RS256")
      .then((key) => {
        signingKid = key.kid;
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ kid: key.kid }));
      })
      .catch((error) => {
        res.writeHead(500);
        res.end(String(error));
      });
    return;
  }
  app(req, res);
});

front.listen(0, "127.0.0.1", () => {
  const { port } = front.address();
  server.issuer.url = `http://127.0.0.1:${port}`;
  process.stdout.write(`${JSON.stringify({ issuer: server.issuer.url })}\n`);
});

process.stdin.resume();
process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
