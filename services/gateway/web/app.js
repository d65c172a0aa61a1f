// The messenger's web client: sign-in, profile, people, friend requests and chats, kept
// current by the live event stream. Plain DOM, no framework; user text is only ever
// set as textContent, never parsed as HTML.

import { api, ApiError, session, randomId } from "./api.js";
import { LiveEvents } from "./events.js";

const $ = (id) => document.getElementById(id);

/** `<tag attrs>children</tag>`; strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Own user id: from the profile, or the login answer until the profile is loaded. */
const myId = () => state.me?.user_id || session.get()?.userId;

// ---------------------------------------------------------------------------------
// State

const state = {
  me: null, // own profile
  users: new Map(), // user_id -> { nickname, avatar_url }
  friends: [],
  incoming: [],
  outgoing: [],
  chats: new Map(), // chat_id -> chat (with last_message)
  chatsCursor: null, // next_cursor of the last page of chats loaded
  unread: new Set(), // chat ids with messages not yet seen
  open: null, // the open chat: { id, nextBefore, shown: Set(message_id), pending: Map(client id -> li) }
  search: { prefix: "", cursor: null },
};

const live = new LiveEvents({
  onEvent: (kind, data) => handleEvent(kind, data).catch(report),
  onState: (value) => {
    const labels = { connecting: "connecting…", live: "live", offline: "reconnecting…" };
    $("live-state").dataset.state = value;
    $("live-state").textContent = labels[value] || value;
  },
  onAuthLost: () => signOutLocally("Your session has ended. Please sign in again."),
});

// ---------------------------------------------------------------------------------
// Messages to the person: a polite status line and an alert for errors.

let noticeTimer = null;

function notice(text) {
  clearTimeout(noticeTimer);
  $("notice").textContent = text;
  noticeTimer = setTimeout(clearNotice, 8000);
}

function clearNotice() {
  clearTimeout(noticeTimer);
  $("notice").textContent = "";
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

/** Shows what went wrong; an ended session returns to the sign-in page. */
function report(error) {
  if (error instanceof ApiError && error.status === 401 && session.get()) {
    signOutLocally("Your session has ended. Please sign in again.");
    return;
  }
  showError(error instanceof ApiError ? error.message : "Something went wrong: " + error);
  if (!(error instanceof ApiError)) console.error(error);
}

/** Runs `action` with `button` disabled, reporting a failure. */
async function busy(button, action) {
  clearError();
  if (button) button.disabled = true;
  try {
    await action();
  } catch (error) {
    report(error);
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------
// Signing in and out

function showSignin(message) {
  $("app-view").hidden = true;
  $("account").hidden = true;
  $("signin-view").hidden = false;
  document.title = "Sign in · Messenger";
  if (message) notice(message);
  $("login-email").focus();
}

function showApp() {
  $("signin-view").hidden = true;
  $("app-view").hidden = false;
  $("account").hidden = false;
  document.title = "Messenger";
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("login-submit"), async () => {
    await signIn($("login-email").value.trim(), $("login-password").value);
  });
});

$("register-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("register-submit"), async () => {
    const email = $("register-email").value.trim();
    const password = $("register-password").value;
    const nickname = $("register-nickname").value.trim();
    await api.register(email, password, nickname);
    $("register-form").reset();
    await signIn(email, password, nickname);
    notice(`Welcome, ${nickname}! Find friends under People.`);
  });
});

// "Sign in with …": one link per configured provider. The provider sends the browser
// back to the gateway, which redirects here with #oauth-signed-in; the token is then
// fetched from a one-time cookie, so it never appears in a URL.
async function showProviders() {
  let answer;
  try {
    answer = await api.oauthProviders();
  } catch (error) {
    console.warn("no sign-in providers:", error);
    return;
  }
  const buttons = answer.providers.map((provider) =>
    h("li", {},
      h("a", {
        class: "button oauth-button",
        href: provider.start_url,
        "data-testid": `oauth-${provider.name}`,
        text: `Sign in with ${provider.display_name}`,
      })));
  $("oauth-buttons").replaceChildren(...buttons);
  $("oauth-providers").hidden = buttons.length === 0;
}

async function finishProviderSignIn() {
  const login = await api.oauthSession();
  session.set({ token: login.access_token, userId: login.user_id });
  await enter();
}

async function signIn(email, password, nickname) {
  const login = await api.login(email, password);
  session.set({ token: login.access_token, userId: login.user_id, nickname });
  $("login-form").reset();
  await enter();
}

/** Shows the signed-in app for the session in sessionStorage. */
async function enter() {
  const current = session.get();
  resetState();
  showApp();
  $("me-nickname").textContent = current.nickname || "…";
  showTab("chats");
  live.start();
  await Promise.all([loadMe(), refreshAll()]);
}

$("logout").addEventListener("click", () => {
  busy($("logout"), async () => {
    try {
      await api.logout();
    } catch (error) {
      // The token is dropped here whatever the server says; a dead session is fine.
      if (!(error instanceof ApiError) || error.status !== 401) console.warn(error);
    }
    signOutLocally("You are signed out.");
  });
});

function signOutLocally(message) {
  live.stop();
  session.clear();
  resetState();
  showSignin(message);
}

function resetState() {
  state.me = null;
  state.users.clear();
  state.friends = [];
  state.incoming = [];
  state.outgoing = [];
  state.chats.clear();
  showMoreChats(null);
  state.unread.clear();
  state.open = null;
  state.search = { prefix: "", cursor: null };
  for (const id of ["chat-list", "search-results", "friend-list", "incoming-requests", "outgoing-requests", "messages"]) {
    $(id).replaceChildren();
  }
  $("search-form").reset();
  $("profile-form").reset();
  $("chat-view").hidden = true;
  $("chat-placeholder").hidden = false;
  $("app-view").classList.remove("chat-open");
  renderCounts();
}

// ---------------------------------------------------------------------------------
// Tabs (Chats, People, Requests, Profile): buttons; arrow keys move between them.

const TABS = ["chats", "people", "requests", "profile"];

function showTab(name) {
  for (const tab of TABS) {
    const selected = tab === name;
    $("tab-" + tab).setAttribute("aria-selected", String(selected));
    $("panel-" + tab).hidden = !selected;
  }
  $("app-view").classList.remove("chat-open");
}

for (const tab of TABS) {
  $("tab-" + tab).addEventListener("click", () => showTab(tab));
  $("tab-" + tab).addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = TABS[(TABS.indexOf(tab) + step + TABS.length) % TABS.length];
    showTab(next);
    $("tab-" + next).focus();
  });
}

// ---------------------------------------------------------------------------------
// Profiles

async function loadMe() {
  // Right after registering, the profile appears a moment later (users creates it from
  // the registration event): wait for it a little.
  for (let attempt = 0; ; attempt++) {
    try {
      state.me = await api.me();
      break;
    } catch (error) {
      if (error.status === 404 && attempt < 20) {
        await sleep(250);
        continue;
      }
      throw error;
    }
  }
  remember(state.me);
  $("me-nickname").textContent = state.me.nickname;
  const current = session.get();
  if (current) session.set({ ...current, nickname: state.me.nickname });
  fillProfileForm();
  renderChats();
}

function remember(profile) {
  state.users.set(profile.user_id, { nickname: profile.nickname, avatar_url: profile.avatar_url || "" });
}

const pendingLookups = new Map();

/** The nickname of `userId`, fetched once and cached; re-renders when it arrives. */
function nicknameOf(userId) {
  const known = state.users.get(userId);
  if (known) return known.nickname;
  if (!pendingLookups.has(userId)) {
    pendingLookups.set(
      userId,
      api
        .user(userId)
        .then((profile) => {
          remember(profile);
          renderChats();
          renderChatTitle();
          for (const author of document.querySelectorAll(`[data-author-id="${CSS.escape(userId)}"] .author`)) {
            author.textContent = profile.nickname;
          }
        })
        .catch(() => {})
        .finally(() => pendingLookups.delete(userId)),
    );
  }
  return "someone";
}

function fillProfileForm() {
  if (!state.me) return;
  $("profile-nickname").value = state.me.nickname;
  $("profile-bio").value = state.me.bio || "";
  $("profile-avatar-url").value = state.me.avatar_url || "";
  const avatar = $("profile-avatar");
  avatar.hidden = !state.me.avatar_url;
  if (state.me.avatar_url) avatar.src = state.me.avatar_url;
}

$("profile-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("profile-save"), async () => {
    const change = {};
    const nickname = $("profile-nickname").value.trim();
    if (nickname !== state.me?.nickname) change.nickname = nickname;
    const bio = $("profile-bio").value;
    if (bio !== (state.me?.bio || "")) change.bio = bio;
    const avatarUrl = $("profile-avatar-url").value.trim();
    if (avatarUrl !== (state.me?.avatar_url || "")) change.avatar_url = avatarUrl;
    if (Object.keys(change).length === 0) {
      notice("Nothing to save.");
      return;
    }
    state.me = await api.updateMe(change);
    remember(state.me);
    $("me-nickname").textContent = state.me.nickname;
    fillProfileForm();
    notice("Profile saved.");
  });
});

// ---------------------------------------------------------------------------------
// People: search, friends

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  busy($("search-submit"), async () => {
    state.search = { prefix: $("search-input").value.trim(), cursor: null };
    $("search-results").replaceChildren();
    await searchMore();
  });
});

$("search-more").addEventListener("click", () => busy($("search-more"), searchMore));

async function searchMore() {
  const page = await api.search(state.search.prefix, state.search.cursor);
  state.search.cursor = page.next_cursor || null;
  $("search-more").hidden = !state.search.cursor;
  for (const profile of page.users) {
    remember(profile);
    $("search-results").append(searchResult(profile));
  }
  if (!$("search-results").children.length) {
    $("search-results").append(h("li", { class: "empty", text: `Nobody's nickname starts with “${state.search.prefix}”.` }));
  }
}

function searchResult(profile) {
  const nickname = profile.nickname;
  const relation = relationTo(profile.user_id, nickname);
  let action;
  if (relation === "me") action = h("span", { class: "tag", text: "you" });
  else if (relation === "friend") action = chatButton(profile.user_id, nickname);
  else if (relation === "asked-me") action = acceptButton(nickname);
  else if (relation === "asked") action = h("span", { class: "tag", text: "request sent" });
  else {
    action = h("button", { type: "button", "data-action": "add", "aria-label": `Send ${nickname} a friend request`, text: "Add friend" });
    action.addEventListener("click", () =>
      busy(action, async () => {
        const sent = await api.sendRequest(nickname);
        if (sent.status === "accepted") {
          notice(`You and ${nickname} are friends now.`);
          await Promise.all([loadFriends(), loadRequests()]);
        } else {
          notice(`Friend request sent to ${nickname}.`);
          await loadRequests();
        }
        action.replaceWith(h("span", { class: "tag", text: sent.status === "accepted" ? "friends" : "request sent" }));
      }),
    );
  }
  return h(
    "li",
    { "data-nickname": nickname, "data-testid": "search-result" },
    avatar(profile.avatar_url, nickname),
    h("span", { class: "who" }, h("strong", { text: nickname }), profile.bio ? h("small", { text: profile.bio }) : null),
    action,
  );
}

function relationTo(userId, nickname) {
  if (userId === myId()) return "me";
  if (state.friends.some((f) => f.user_id === userId)) return "friend";
  if (state.incoming.some((r) => r.from_nickname === nickname)) return "asked-me";
  if (state.outgoing.some((r) => r.to_nickname === nickname)) return "asked";
  return "none";
}

function avatar(url, nickname) {
  if (url && /^https?:\/\//i.test(url)) {
    return h("img", { class: "avatar", src: url, alt: "", loading: "lazy", referrerPolicy: "no-referrer" });
  }
  return h("span", { class: "avatar", "aria-hidden": "true", text: (nickname || "?").charAt(0).toUpperCase() });
}

async function loadFriends() {
  const friends = await api.friends();
  state.friends = friends;
  for (const friend of friends) {
    const known = state.users.get(friend.user_id);
    state.users.set(friend.user_id, { avatar_url: "", ...known, nickname: friend.nickname });
  }
  renderFriends();
}

function renderFriends() {
  const list = $("friend-list");
  list.replaceChildren(
    ...state.friends.map((friend) => {
      const remove = h("button", { type: "button", class: "quiet", "data-action": "remove", "aria-label": `Remove ${friend.nickname} from friends`, text: "Remove" });
      remove.addEventListener("click", () => {
        if (!window.confirm(`Remove ${friend.nickname} from your friends?`)) return;
        busy(remove, async () => {
          await api.removeFriend(friend.nickname);
          notice(`${friend.nickname} is no longer your friend.`);
          await loadFriends();
        });
      });
      return h(
        "li",
        { "data-nickname": friend.nickname, "data-testid": "friend" },
        avatar(state.users.get(friend.user_id)?.avatar_url, friend.nickname),
        h("span", { class: "who" }, h("strong", { text: friend.nickname })),
        chatButton(friend.user_id, friend.nickname),
        remove,
      );
    }),
  );
  $("friend-list-empty").hidden = state.friends.length > 0;
}

function chatButton(userId, nickname) {
  const button = h("button", { type: "button", "data-action": "chat", "aria-label": `Chat with ${nickname}`, text: "Chat" });
  button.addEventListener("click", () =>
    busy(button, async () => {
      // Returns the existing direct chat if there is one.
      const chat = await api.createChat([userId]);
      state.chats.set(chat.chat_id, chat);
      renderChats();
      await openChat(chat.chat_id);
    }),
  );
  return button;
}

// ---------------------------------------------------------------------------------
// Friend requests

async function loadRequests() {
  const [incoming, outgoing] = await Promise.all([api.requests("incoming"), api.requests("outgoing")]);
  state.incoming = incoming;
  state.outgoing = outgoing;
  renderRequests();
}

function renderRequests() {
  $("incoming-requests").replaceChildren(
    ...state.incoming.map((request) => {
      const nickname = request.from_nickname;
      const reject = h("button", { type: "button", class: "quiet", "data-action": "reject", "aria-label": `Reject ${nickname}'s request`, text: "Reject" });
      reject.addEventListener("click", () =>
        busy(reject, async () => {
          await api.rejectRequest(nickname);
          state.incoming = state.incoming.filter((r) => r.from_nickname !== nickname);
          renderRequests();
          notice(`Request from ${nickname} rejected.`);
        }),
      );
      return h(
        "li",
        { "data-nickname": nickname, "data-testid": "incoming-request" },
        h("span", { class: "who" }, h("strong", { text: nickname }), h("small", { text: "wants to be your friend" })),
        acceptButton(nickname),
        reject,
      );
    }),
  );
  $("outgoing-requests").replaceChildren(
    ...state.outgoing.map((request) =>
      h(
        "li",
        { "data-nickname": request.to_nickname, "data-testid": "outgoing-request" },
        h("span", { class: "who" }, h("strong", { text: request.to_nickname }), h("small", { text: "has not answered yet" })),
      ),
    ),
  );
  $("incoming-empty").hidden = state.incoming.length > 0;
  $("outgoing-empty").hidden = state.outgoing.length > 0;
  renderCounts();
}

function acceptButton(nickname) {
  const button = h("button", { type: "button", "data-action": "accept", "aria-label": `Accept ${nickname}'s request`, text: "Accept" });
  button.addEventListener("click", () =>
    busy(button, async () => {
      await api.acceptRequest(nickname);
      state.incoming = state.incoming.filter((r) => r.from_nickname !== nickname);
      renderRequests();
      notice(`You and ${nickname} are friends now. Start a chat under People.`);
      await loadFriends();
    }),
  );
  return button;
}

function renderCounts() {
  const badge = $("requests-badge");
  const count = state.incoming.length;
  badge.hidden = count === 0;
  badge.textContent = String(count);
  badge.setAttribute("aria-label", `${count} waiting`);
}

// ---------------------------------------------------------------------------------
// Chats

// The most recently active page of chats; older pages on "More chats".
async function loadChats() {
  const page = await api.chats();
  state.chats = new Map(page.chats.map((chat) => [chat.chat_id, chat]));
  showMoreChats(page.next_cursor);
  renderChats();
}

$("chats-more").addEventListener("click", () =>
  busy($("chats-more"), async () => {
    const page = await api.chats(state.chatsCursor);
    for (const chat of page.chats) {
      // A chat already shown may be newer than this page says.
      if (!state.chats.has(chat.chat_id)) state.chats.set(chat.chat_id, chat);
    }
    showMoreChats(page.next_cursor);
    renderChats();
  }),
);

function showMoreChats(cursor) {
  state.chatsCursor = cursor || null;
  $("chats-more").hidden = !state.chatsCursor;
}

function chatName(chat) {
  const others = chat.participant_ids.filter((id) => id !== myId());
  if (others.length === 0) return "Just you";
  return others.map(nicknameOf).join(", ");
}

function activity(chat) {
  return chat.last_activity_at || chat.last_message?.sent_at || chat.created_at || "";
}

function renderChats() {
  const chats = [...state.chats.values()].sort((a, b) => activity(b).localeCompare(activity(a)));
  $("chat-list").replaceChildren(
    ...chats.map((chat) => {
      const last = chat.last_message;
      const unread = state.unread.has(chat.chat_id);
      const preview = last ? `${last.author_id === myId() ? "You: " : ""}${last.content}` : "No messages yet";
      const button = h(
        "button",
        {
          type: "button",
          class: "chat-item" + (unread ? " unread" : ""),
          "aria-current": state.open?.id === chat.chat_id ? "true" : undefined,
        },
        h("span", { class: "chat-name" }, chatName(chat), unread ? h("span", { class: "dot", text: " • new" }) : null),
        h("span", { class: "chat-last", text: preview }),
        last?.sent_at ? h("time", { dateTime: last.sent_at, text: shortTime(last.sent_at) }) : null,
      );
      button.addEventListener("click", () => openChat(chat.chat_id).catch(report));
      return h("li", { "data-chat-id": chat.chat_id, "data-testid": "chat-item" }, button);
    }),
  );
  $("chat-list-empty").hidden = state.chats.size > 0;
}

function renderChatTitle() {
  if (!state.open) return;
  const chat = state.chats.get(state.open.id);
  if (chat) $("chat-title").textContent = chatName(chat);
}

async function openChat(chatId) {
  clearError();
  clearNotice(); // about something else, now that this chat has the attention
  state.open = { id: chatId, nextBefore: null, shown: new Set(), pending: new Map() };
  state.unread.delete(chatId);
  if (!state.chats.has(chatId)) state.chats.set(chatId, await api.chat(chatId));
  $("messages").replaceChildren();
  $("chat-view").hidden = false;
  $("chat-placeholder").hidden = true;
  $("app-view").classList.add("chat-open");
  showTab("chats");
  $("app-view").classList.add("chat-open");
  renderChatTitle();
  renderChats();
  await loadOlder();
  scrollToEnd();
  $("message-input").focus();
}

$("chat-back").addEventListener("click", () => {
  $("app-view").classList.remove("chat-open");
  $("chat-list").querySelector(`[data-chat-id="${state.open?.id}"] button`)?.focus();
});

$("load-older").addEventListener("click", () => busy($("load-older"), loadOlder));

/** The next page of older messages, kept in view where the reader was. */
async function loadOlder() {
  const open = state.open;
  if (!open) return;
  const page = await api.history(open.id, open.nextBefore);
  if (state.open !== open) return;
  const scroller = $("chat-scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  const older = page.messages
    .filter((m) => !open.shown.has(m.message_id))
    .reverse()
    .map((m) => {
      open.shown.add(m.message_id);
      return messageItem(m);
    });
  $("messages").prepend(...older);
  open.nextBefore = page.next_before || null;
  $("load-older").hidden = !open.nextBefore;
  scroller.scrollTop = scroller.scrollHeight - fromBottom;
}

function messageItem(message, { pending = false } = {}) {
  const mine = message.author_id === myId();
  const author = mine ? "You" : nicknameOf(message.author_id);
  return h(
    "li",
    {
      class: "message " + (mine ? "mine" : "theirs") + (pending ? " pending" : ""),
      "data-message-id": message.message_id,
      "data-author-id": message.author_id,
      "data-testid": "message",
    },
    h("span", { class: "author", text: author }),
    h("p", { class: "content", text: message.content }),
    h(
      "span",
      { class: "meta" },
      message.sent_at ? h("time", { dateTime: message.sent_at, text: shortTime(message.sent_at) }) : null,
      h("span", { class: "status", text: pending ? "sending…" : "" }),
    ),
  );
}

function nearEnd() {
  const scroller = $("chat-scroller");
  return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
}

function scrollToEnd() {
  const scroller = $("chat-scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

$("message-input").addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const content = $("message-input").value;
  if (!content.trim() || !state.open) return;
  $("message-input").value = "";
  clearError();
  const open = state.open;
  const clientId = randomId();
  const item = messageItem(
    { message_id: "", author_id: myId(), content, sent_at: null },
    { pending: true },
  );
  item.dataset.clientId = clientId;
  open.pending.set(clientId, item);
  $("messages").append(item);
  scrollToEnd();
  deliver(open, clientId, content, item);
});

/**
 * Sends one message; retries the same `client_message_id` while the outcome is
 * unknown, so the server stores it once however often it is sent.
 */
async function deliver(open, clientId, content, item) {
  item.classList.remove("failed");
  item.classList.add("pending");
  item.querySelector(".status").replaceChildren("sending…");
  for (let attempt = 0; ; attempt++) {
    try {
      const message = await api.send(open.id, content, clientId);
      confirmSent(open, clientId, message);
      return;
    } catch (error) {
      if (error instanceof ApiError && error.transient && attempt < 3) {
        await sleep(500 * 2 ** attempt);
        continue;
      }
      if (error instanceof ApiError && error.status === 401) {
        report(error);
        return;
      }
      item.classList.replace("pending", "failed");
      const retry = h("button", { type: "button", class: "link", text: "Retry" });
      retry.addEventListener("click", () => deliver(open, clientId, content, item));
      item.querySelector(".status").replaceChildren(`Not sent: ${error.message} `, retry);
      return;
    }
  }
}

/** A message of ours is stored: show it as sent, exactly once. */
function confirmSent(open, clientId, message) {
  const item = open.pending.get(clientId);
  open.pending.delete(clientId);
  noteActivity(message);
  if (!item) return;
  if (open.shown.has(message.message_id)) {
    item.remove(); // the stream was faster than the answer
    return;
  }
  open.shown.add(message.message_id);
  item.replaceWith(messageItem(message));
}

function noteActivity(message) {
  const chat = state.chats.get(message.chat_id);
  if (!chat) return false;
  chat.last_message = message;
  if (message.sent_at) chat.last_activity_at = message.sent_at;
  renderChats();
  return true;
}

function shortTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date().toDateString() === date.toDateString();
  return today
    ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : date.toLocaleDateString([], { day: "numeric", month: "short" });
}

// ---------------------------------------------------------------------------------
// Live events

async function handleEvent(kind, data) {
  switch (kind) {
    case "message":
      return onMessage(data.message);
    case "chat_created":
      return loadChats();
    case "friend_request": {
      const nickname = data.from_nickname;
      if (!state.incoming.some((r) => r.from_nickname === nickname)) {
        state.incoming.push({ from_user_id: data.from_user_id, from_nickname: nickname });
        renderRequests();
      }
      notice(`${nickname} wants to be your friend — see Requests.`);
      return;
    }
    case "friend_request_accepted":
      notice(`${data.nickname} accepted your friend request.`);
      return Promise.all([loadFriends(), loadRequests()]);
    case "reset":
      return refreshAll();
    default:
      return;
  }
}

async function onMessage(message) {
  if (!noteActivity(message)) await loadChats();
  const open = state.open;
  const mine = message.author_id === myId();
  if (open && open.id === message.chat_id) {
    if (open.shown.has(message.message_id)) return;
    if (message.client_message_id && open.pending.has(message.client_message_id)) {
      confirmSent(open, message.client_message_id, message);
      return;
    }
    const follow = nearEnd() || mine;
    open.shown.add(message.message_id);
    $("messages").append(messageItem(message));
    if (follow) scrollToEnd();
  } else if (!mine) {
    state.unread.add(message.chat_id);
    renderChats();
    notice(`New message from ${nicknameOf(message.author_id)}.`);
  }
}

/** Refetches everything the stream may have missed (on `reset` and fresh connections). */
async function refreshAll() {
  await Promise.all([loadFriends(), loadRequests(), loadChats()]);
  const open = state.open;
  if (open) {
    // Add what arrived while away; older pages already shown stay.
    const page = await api.history(open.id);
    if (state.open !== open) return;
    const follow = nearEnd();
    for (const message of page.messages.reverse()) {
      if (open.shown.has(message.message_id)) continue;
      if (message.client_message_id && open.pending.has(message.client_message_id)) {
        confirmSent(open, message.client_message_id, message);
        continue;
      }
      open.shown.add(message.message_id);
      $("messages").append(messageItem(message));
    }
    if (follow) scrollToEnd();
  }
}

// ---------------------------------------------------------------------------------
// Start: a session kept in this tab goes straight in.

const arrival = location.hash;
if (arrival === "#oauth-signed-in" || arrival === "#oauth-linked") {
  history.replaceState(null, "", location.pathname);
}
showProviders();
if (arrival === "#oauth-signed-in") {
  finishProviderSignIn().catch((error) => {
    showSignin();
    report(error);
  });
} else if (session.get()?.token) {
  enter()
    .then(() => {
      if (arrival === "#oauth-linked") notice("The provider is linked: you can sign in with it now.");
    })
    .catch(report);
} else {
  showSignin();
}
