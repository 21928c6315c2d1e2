// A websocket that keeps itself connected: exponential backoff with jitter, a visible connection state,
// and a stop when the server says "never again" (an application close code) or the session is gone.
"use strict";

(function () {
  const BASE_DELAY_MS = 500;
  const MAX_DELAY_MS = 15000;

  // ws: under http, wss: under https (a page served over TLS must never open a cleartext socket).
  function socketUrl(path, location) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return scheme + "//" + location.host + path;
  }

  // "Equal jitter": half the exponential ceiling, plus a random half. Never zero (no hot loop against a
  // refusing server), and a thousand pages dropped by one restart do not come back in the same instant.
  function backoffDelay(attempt, random) {
    const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, attempt));
    return Math.round(ceiling / 2 + random() * (ceiling / 2));
  }

  class LiveSocket {
    // options: path() -> "/ws/..."; onMessage(object); stateElement; finalCodes {code: "label"}
    constructor(options) {
      this.path = options.path;
      this.onMessage = options.onMessage;
      this.stateElement = options.stateElement;
      this.finalCodes = options.finalCodes || {};
      this.attempt = 0;
      this.timer = null;
      this.socket = null;
      window.addEventListener("online", () => this.reconnectNow());
    }

    start() {
      this.connect();
    }

    setState(state, label) {
      if (!this.stateElement) return;
      this.stateElement.dataset.state = state;
      this.stateElement.textContent = label;
    }

    connect() {
      this.timer = null;
      this.setState("connecting", "connecting…");
      const socket = new WebSocket(socketUrl(this.path(), window.location));
      this.socket = socket;
      let opened = false;
      socket.addEventListener("open", () => {
        opened = true;
        this.attempt = 0;
        this.setState("live", "live");
      });
      socket.addEventListener("message", (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (error) {
          return; // not ours: ignore rather than break the page
        }
        this.onMessage(data);
      });
      socket.addEventListener("close", (event) => this.closed(event, opened));
    }

    async closed(event, opened) {
      this.socket = null;
      const final = this.finalCodes[event.code];
      if (final) {
        this.setState("ended", final);
        return;
      }
      // A handshake refused while the server answers HTTP: is the session gone?
      if (!opened && (await this.signedOut())) {
        this.setState("signed-out", "signed out: sign in again from the master");
        return;
      }
      const delay = backoffDelay(this.attempt, Math.random);
      this.attempt += 1;
      this.setState("reconnecting", "offline, reconnecting in " + Math.ceil(delay / 1000) + " s");
      this.timer = window.setTimeout(() => this.connect(), delay);
    }

    reconnectNow() {
      if (this.timer === null) return;
      window.clearTimeout(this.timer);
      this.attempt = 0;
      this.connect();
    }

    async signedOut() {
      try {
        const response = await fetch("/api/initial_state", {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        return response.status === 401;
      } catch (error) {
        return false; // the server is down: keep retrying
      }
    }
  }

  window.Reactive = { LiveSocket: LiveSocket, socketUrl: socketUrl, backoffDelay: backoffDelay };
})();
