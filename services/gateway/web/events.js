// The live event stream (Server-Sent Events at /v1/events).
//
// EventSource cannot send an Authorization header, so each connection starts with a
// single-use ticket from POST /v1/events/ticket. Because the ticket is single-use, the
// browser's own reconnect (same URL) would be refused: on any error this closes the
// EventSource and opens a new one with a fresh ticket, passing the last event id as
// `last_event_id` so the gateway replays what was missed (or sends `reset`).

import { api } from "./api.js";

const KINDS = ["message", "chat_created", "friend_request", "friend_request_accepted", "reset"];
const MAX_DELAY_MS = 30_000;

export class LiveEvents {
  /**
   * onEvent(kind, data): an event; kind `reset` means "refetch everything".
   * onState(state): `connecting`, `live` or `offline`.
   * onAuthLost(error): the session is no longer valid.
   */
  constructor({ onEvent, onState, onAuthLost }) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.onAuthLost = onAuthLost;
    this.source = null;
    this.lastId = null;
    this.failures = 0;
    this.timer = null;
    this.running = false;
    // Bumped by stop(): a connect() still waiting for its ticket from an earlier
    // session must not open a stream for the next one.
    this.generation = 0;
    this.wakeUp = () => this.reconnectNow();
  }

  start() {
    if (this.running) return;
    this.running = true;
    window.addEventListener("online", this.wakeUp);
    this.connect();
  }

  stop() {
    this.running = false;
    this.generation += 1;
    window.removeEventListener("online", this.wakeUp);
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
    this.lastId = null;
    this.failures = 0;
  }

  /** Skips the wait when the network is back. */
  reconnectNow() {
    if (!this.running || this.timer === null) return;
    clearTimeout(this.timer);
    this.connect();
  }

  async connect() {
    this.timer = null;
    const generation = this.generation;
    const current = () => this.running && generation === this.generation;
    this.onState("connecting");
    let ticket;
    try {
      ({ ticket } = await api.ticket());
    } catch (error) {
      if (!current()) return;
      if (error.status === 401) {
        this.running = false;
        this.onAuthLost(error);
        return;
      }
      this.retryLater();
      return;
    }
    if (!current()) return;
    let url = `/v1/events?ticket=${encodeURIComponent(ticket)}`;
    if (this.lastId) url += `&last_event_id=${encodeURIComponent(this.lastId)}`;
    const resumed = Boolean(this.lastId);
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.failures = 0;
      this.onState("live");
      // Without an id to resume from, whatever happened before this connection is not
      // on it (the first connection too: the page loaded its lists before it was open),
      // so the page refetches.
      if (!resumed) this.onEvent("reset", {});
    };
    source.onerror = () => {
      // Also the end of a stream the server closed (restart, logout elsewhere): start
      // over with a new ticket either way.
      source.close();
      if (this.source !== source) return;
      this.source = null;
      if (current()) this.retryLater();
    };
    for (const kind of KINDS) {
      source.addEventListener(kind, (event) => {
        if (kind === "reset") this.lastId = null;
        else if (event.lastEventId) this.lastId = event.lastEventId;
        let data = {};
        try {
          data = JSON.parse(event.data || "{}");
        } catch {
          return;
        }
        this.onEvent(kind, data);
      });
    }
  }

  retryLater() {
    this.onState("offline");
    this.failures += 1;
    // Exponential backoff with jitter, so replicas coming back are not stormed.
    const base = Math.min(MAX_DELAY_MS, 500 * 2 ** Math.min(this.failures, 6));
    const delay = base / 2 + Math.random() * (base / 2);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
