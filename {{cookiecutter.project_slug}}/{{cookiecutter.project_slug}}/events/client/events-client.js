// A browser client for this project's event stream: EventSource, plus what it leaves out.
// Served by the project at /api/events/client.js; no dependencies. docs/events.md has examples.
//
//   import { EventStreamClient } from "/api/events/client.js";
//   const client = new EventStreamClient("/api/events/stream/?topic=news", {
//     onState: (state, detail) => console.log(state, detail),  // connecting|open|reconnecting|closed
//     onReset: () => reloadStateFromTheApi(),                  // events were lost: reload
//   });
//   client.on("headline", (data, event) => show(data));       // data: the parsed JSON
//
// What it adds to EventSource: it says why the server refused the stream (EventSource does not
// expose the status), tries again after a 429's Retry-After, stops on 401 and 403, asks for a new
// stream ticket when one expires (option `ticket`), and resumes from the last event id when it
// has to open a new EventSource.

export class EventStreamClient {
  #url;
  #options;
  #source = null;
  #listeners = new Map();
  #state = "connecting";
  #lastEventId = "";
  #ticketUrl = null;
  #ticketWorked = false;  // a ticket that never opened the stream is not asked for again
  #retryTimer = null;
  #closed = false;

  /**
   * @param {string} url The stream URL, with its ?topic= parameters.
   * @param {object} [options]
   * @param {() => Promise<{url: string}>} [options.ticket] Asks for a stream ticket (the JSON of
   *   POST /api/events/tickets/; throw if it is refused); the stream then opens with it, and a
   *   new one is asked for when the server refuses an old one.
   * @param {boolean} [options.withCredentials] Send cookies to another origin.
   * @param {(state: string, detail: string) => void} [options.onState]
   * @param {(lastEventId: string) => void} [options.onReset]
   * @param {(reason: string) => void} [options.onRevoked]
   */
  constructor(url, options = {}) {
    this.#url = url;
    this.#options = options;
    this.#open();
  }

  /** The connection: "connecting", "open", "reconnecting" or "closed". */
  get state() {
    return this.#state;
  }

  get lastEventId() {
    return this.#lastEventId;
  }

  /** Calls `listener(data, event)` for each event of `type` (data parsed from JSON); events
   * without a type are "message". */
  on(type, listener) {
    if (!this.#listeners.has(type)) {
      this.#listeners.set(type, new Set());
      this.#source?.addEventListener(type, this.#dispatch);
    }
    this.#listeners.get(type).add(listener);
    return this;
  }

  close() {
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    this.#source?.close();
    this.#setState("closed", "closed by the page");
  }

  async #open(freshTicket = false) {
    if (this.#closed) return;
    this.#setState("connecting", "");
    let url = this.#url;
    if (this.#options.ticket) {
      if (!this.#ticketUrl || freshTicket) {
        try {
          this.#ticketUrl = (await this.#options.ticket()).url;
          this.#ticketWorked = false;
        } catch (error) {
          this.#setState("closed", `could not get a stream ticket: ${error.message}`);
          return;
        }
      }
      url = this.#ticketUrl;
    }
    const target = new URL(url, new URL(this.#url, location.href));
    if (this.#lastEventId) target.searchParams.set("last_event_id", this.#lastEventId);
    const source = new EventSource(target, { withCredentials: Boolean(this.#options.withCredentials) });
    this.#source = source;
    source.onopen = () => {
      this.#ticketWorked = true;
      this.#setState("open", "");
    };
    for (const type of this.#listeners.keys()) source.addEventListener(type, this.#dispatch);
    source.addEventListener("reset", (event) => {
      this.#remember(event);
      this.#options.onReset?.(event.lastEventId);
    });
    source.addEventListener("revoked", (event) => {
      this.#options.onRevoked?.(JSON.parse(event.data).reason);
      this.#setState("reconnecting", "access ended: checking it");
    });
    source.onerror = () => {
      // CONNECTING: the browser reconnects by itself, with Last-Event-ID. CLOSED: the server
      // answered with an error, which EventSource does not show: ask for it.
      if (source.readyState === EventSource.CLOSED) this.#refused(target);
      else this.#setState("reconnecting", "");
    };
  }

  #dispatch = (event) => {
    this.#remember(event);
    const listeners = this.#listeners.get(event.type);
    if (!listeners) return;
    let data = event.data;
    try {
      data = JSON.parse(event.data);
    } catch {
      // Not JSON (published by another service): handed over as text.
    }
    for (const listener of listeners) listener(data, event);
  };

  #remember(event) {
    if (event.lastEventId) this.#lastEventId = event.lastEventId;
  }

  async #refused(url) {
    this.#source?.close();
    const request = new AbortController();
    let response;
    try {
      const credentials = this.#options.withCredentials ? "include" : "same-origin";
      response = await fetch(url, { signal: request.signal, credentials, headers: { Accept: "text/event-stream" } });
    } catch {
      this.#retry(5, "the server cannot be reached");
      return;
    }
    if (response.ok) {  // accepted now: whatever refused it has passed
      request.abort();
      this.#open();
      return;
    }
    const detail = (await response.json().catch(() => ({}))).detail || response.statusText;
    if (response.status === 429) {
      this.#retry(Number(response.headers.get("Retry-After")) || 10, `429: ${detail}`);
    } else if (response.status === 401 && this.#options.ticket && this.#ticketWorked) {
      this.#open(true);  // expired (or revoked): a new ticket, asked with the page's credentials
    } else {
      this.#setState("closed", `${response.status}: ${detail}`);
    }
  }

  #retry(seconds, detail) {
    this.#setState("closed", `${detail} (trying again in ${seconds} s)`);
    this.#retryTimer = setTimeout(() => this.#open(), seconds * 1000);
  }

  #setState(state, detail) {
    this.#state = state;
    this.#options.onState?.(state, detail);
  }
}
