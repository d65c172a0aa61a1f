// The REST API as the page uses it: JSON in and out, the bearer token from the session,
// and every failure turned into an ApiError with a sentence a person can read (the
// problem+json `detail`, never the raw body).

const TOKEN_KEY = "messenger.session";

/** A failed call: `message` is for people, `status` and `code` for decisions. */
export class ApiError extends Error {
  constructor(message, { status = 0, code = "network", retryAfter = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** Worth sending again unchanged: the request may not have been served. */
  get transient() {
    return this.status === 0 || this.status === 502 || this.status === 503 || this.status === 504;
  }
}

// The session lives in sessionStorage: it survives a reload of this tab, is not shared
// with other tabs (two people can try the messenger in two windows), and never goes
// into a URL.
export const session = {
  get() {
    try {
      return JSON.parse(sessionStorage.getItem(TOKEN_KEY) || "null");
    } catch {
      return null;
    }
  },
  set(value) {
    sessionStorage.setItem(TOKEN_KEY, JSON.stringify(value));
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/**
 * Calls `path`; resolves with the parsed JSON body (or null), rejects with ApiError.
 * Cookies are never sent, except with `{ cookies: true }` (the OAuth hand-over).
 */
export async function call(method, path, body, { cookies = false } = {}) {
  const headers = { accept: "application/json" };
  const current = session.get();
  if (current?.token) headers.authorization = `Bearer ${current.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: cookies ? "same-origin" : "omit",
      cache: "no-store",
    });
  } catch {
    throw new ApiError("Cannot reach the server. Check your connection and try again.");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.ok) return data;
  throw problemError(response, data);
}

function problemError(response, problem) {
  const retryAfter = Number(response.headers.get("retry-after")) || null;
  const code = problem?.code || "http_" + response.status;
  let message = typeof problem?.detail === "string" && problem.detail
    ? sentence(problem.detail)
    : fallbackMessage(response.status, problem?.title);
  if (retryAfter) message += ` Try again in ${retryAfter} s.`;
  return new ApiError(message, { status: response.status, code, retryAfter });
}

// The services' details are lower-case fragments ("nickname: already taken"); a
// capital and a full stop make them read as messages.
function sentence(text) {
  const trimmed = text.trim();
  const capital = trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?…]$/.test(capital) ? capital : capital + ".";
}

function fallbackMessage(status, title) {
  if (status === 401) return "Your session has ended. Please sign in again.";
  if (status === 404) return "Not found.";
  if (status === 429) return "Too many attempts.";
  if (status >= 500) return "The server could not do that just now. Please try again.";
  return title ? sentence(title) : `The request failed (HTTP ${status}).`;
}

/** A random id, also where crypto.randomUUID is missing (plain http is not a secure context). */
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const enc = encodeURIComponent;

/** Every entry of a paged list (`key` names it in each page), following `next_cursor`. */
async function allPages(path, key) {
  const entries = [];
  let cursor = null;
  do {
    const separator = path.includes("?") ? "&" : "?";
    const page = await call("GET", `${path}${separator}limit=100` + (cursor ? `&cursor=${enc(cursor)}` : ""));
    entries.push(...page[key]);
    cursor = page.next_cursor || null;
  } while (cursor);
  return entries;
}

export const api = {
  register: (email, password, nickname) =>
    call("POST", "/v1/auth/register", { email, password, nickname }),
  login: (email, password) => call("POST", "/v1/auth/login", { email, password }),
  logout: () => call("POST", "/v1/auth/logout"),
  oauthProviders: () => call("GET", "/v1/auth/oauth/providers"),
  // The token of a sign-in just completed at a provider, from its one-time HttpOnly cookie.
  oauthSession: () => call("POST", "/v1/auth/oauth/session", undefined, { cookies: true }),
  me: () => call("GET", "/v1/users/me"),
  updateMe: (change) => call("PATCH", "/v1/users/me", change),
  user: (id) => call("GET", `/v1/users/${enc(id)}`),
  search: (prefix, cursor) =>
    call("GET", `/v1/users?search=${enc(prefix)}&limit=20` + (cursor ? `&cursor=${enc(cursor)}` : "")),
  friends: () => allPages("/v1/friends", "friends"),
  removeFriend: (nickname) => call("DELETE", `/v1/friends/${enc(nickname)}`),
  requests: (direction) => allPages(`/v1/friends/requests?direction=${direction}`, "requests"),
  sendRequest: (nickname) => call("POST", "/v1/friends/requests", { nickname }),
  acceptRequest: (nickname) => call("POST", `/v1/friends/requests/${enc(nickname)}/accept`),
  rejectRequest: (nickname) => call("POST", `/v1/friends/requests/${enc(nickname)}/reject`),
  chats: (cursor) => call("GET", "/v1/chats?limit=50" + (cursor ? `&cursor=${enc(cursor)}` : "")),
  chat: (id) => call("GET", `/v1/chats/${enc(id)}`),
  createChat: (participantIds) => call("POST", "/v1/chats", { participant_ids: participantIds }),
  history: (chatId, before) =>
    call("GET", `/v1/chats/${enc(chatId)}/messages?limit=30` + (before ? `&before=${enc(before)}` : "")),
  send: (chatId, content, clientMessageId) =>
    call("POST", `/v1/chats/${enc(chatId)}/messages`, { content, client_message_id: clientMessageId }),
  ticket: () => call("POST", "/v1/events/ticket"),
};
