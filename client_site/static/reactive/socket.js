// A websocket that keeps itself connected: exponential backoff with jitter, a visible connection state,
// and a stop when the server says "never again" (an application close code) or the session is gone.
// A socket that expects a steady stream (the clock) can also watch for silence: an open TCP connection
// to a stopped server, or over a path that drops packets, says nothing for minutes while nothing arrives.
"use strict";

(function () {
  const BASE_DELAY_MS = 500;
  const MAX_DELAY_MS = 15000;
  const WATCH_EVERY_MS = 500;
  // A handshake not answered by then is given up and retried through the backoff: a stopped server, or a
  // proxy that takes the connection and never answers, would hold the page on "connecting…" for minutes.
  const HANDSHAKE_TIMEOUT_MS = 10000;
  // The sign-out check (a refused handshake: is the session gone?) waits this long at most, and its "still
  // signed in" is trusted this long: refused handshakes during an outage do not each cost a request.
  const PROBE_TIMEOUT_MS = 5000;
  const PROBE_TRUSTED_MS = 10000;
  // The server going away (1001), restarting (1012) or overloaded (1013) closes every page at once: their
  // first reconnect is spread over this long, not all in the same half second.
  const SPREAD_CODES = [1001, 1012, 1013];
  const SPREAD_MS = 5000;
  // The server closed the socket because its session may be over (a sign-out, another account signed in):
  // the next refusal is checked at once, whatever an earlier check said.
  const SESSION_CHANGED = 4001;

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

  // A monotonic clock: the watchdog must not be fooled by the wall clock being stepped (NTP, the user).
  function monotonicNow() {
    return window.performance && typeof window.performance.now === "function"
      ? window.performance.now()
      : Date.now();
  }

  class LiveSocket {
    // options: path() -> "/ws/..."; onMessage(object); stateElement; announceElement (a live region told
    // each change of state, not of label: a counter ticking in it would be read out every second);
    // finalCodes {code: "label"}; onStop(state) when the socket stops for good ("ended", "signed-out");
    // for a steady stream only: staleAfterMs (silence shown as "stale"), restartAfterMs (silence after which
    // the socket is dropped and reconnected through the backoff), staleLabel(seconds) -> "no ... for N s".
    constructor(options) {
      this.path = options.path;
      this.onMessage = options.onMessage;
      this.stateElement = options.stateElement;
      this.announceElement = options.announceElement || null;
      this.onStop = options.onStop || (() => {});
      this.finalCodes = options.finalCodes || {};
      this.staleAfterMs = options.staleAfterMs || 0;
      this.restartAfterMs = options.restartAfterMs || 0;
      // Silence restarts in a row: each doubles the silence the next one waits for (up to 32 times), so
      // that a stream stopped at its source (the beat down, the server up) does not have every page
      // reconnect every few seconds for as long as it lasts.
      this.silentRestarts = 0;
      this.staleLabel = options.staleLabel || ((seconds) => "no messages for " + seconds + " s");
      this.attempt = 0;
      this.timer = null;
      this.socket = null;
      this.watchdog = null;
      this.openedAt = 0;
      this.lastMessageAt = 0;
      this.state = null;
      this.label = null;
      this.handshakeTimer = null;
      this.probedAt = -Infinity; // when the sign-out check last said "signed in"
      // Back online (a network change, a laptop awake): a socket that looks open may be on a path that is
      // gone, and would say nothing until TCP gives up. Start over on the new network at once.
      window.addEventListener("online", () => this.startOver());
      // A tab frozen in the background resumes with its timers before its queued messages: the silence
      // it was frozen for is not the stream's.
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "visible" && this.watchdog !== null) this.lastMessageAt = monotonicNow();
      });
    }

    get watched() {
      return this.staleAfterMs > 0 || this.restartAfterMs > 0;
    }

    start() {
      this.connect();
    }

    setState(state, label) {
      if (state === this.state && label === this.label) return;
      const changed = state !== this.state;
      this.state = state;
      this.label = label;
      if (changed && this.announceElement) this.announceElement.textContent = label;
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
      this.handshakeTimer = window.setTimeout(() => this.abandon(socket), HANDSHAKE_TIMEOUT_MS);
      // Events of a socket the watchdog gave up on are ignored: its replacement is already under way (and
      // its close event may come a minute late, when the closing handshake times out on a dead path).
      socket.addEventListener("open", () => {
        if (this.socket !== socket) return;
        opened = true;
        this.clearHandshakeTimer();
        // A watched socket resets the backoff only once its stream flows (see check): a server that
        // accepts and then says nothing must not be reconnected to at the shortest delay forever.
        if (!this.watched) this.attempt = 0;
        this.setState("live", "live");
        this.watch();
      });
      socket.addEventListener("message", (event) => {
        if (this.socket !== socket) return;
        this.heard();
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (error) {
          return; // not ours: ignore rather than break the page
        }
        this.onMessage(data);
      });
      socket.addEventListener("close", (event) => {
        if (this.socket !== socket) return;
        this.closed(event, opened);
      });
    }

    async closed(event, opened) {
      this.socket = null;
      this.clearHandshakeTimer();
      this.unwatch();
      const final = this.finalCodes[event.code];
      if (final) {
        this.stop("ended", final);
        return;
      }
      if (event.code === SESSION_CHANGED) this.probedAt = -Infinity;
      // A handshake refused while the server answers HTTP: is the session gone?
      if (!opened && (await this.signedOut())) {
        this.stop("signed-out", "signed out: sign in again from the master");
        return;
      }
      this.retry(SPREAD_CODES.includes(event.code) ? SPREAD_MS : 0);
    }

    stop(state, label) {
      this.setState(state, label);
      this.onStop(state);
    }

    clearHandshakeTimer() {
      if (this.handshakeTimer === null) return;
      window.clearTimeout(this.handshakeTimer);
      this.handshakeTimer = null;
    }

    // A handshake with no answer: drop it (its close may come minutes later, and is then ignored) and go
    // through the backoff like any lost connection.
    abandon(socket) {
      this.handshakeTimer = null;
      if (this.socket !== socket) return;
      this.socket = null;
      try {
        socket.close();
      } catch (error) {
        // already closing: nothing more to do with it
      }
      this.retry();
    }

    // spreadMs: a retry after the server closed every page at once waits up to that long at least.
    retry(spreadMs = 0) {
      let delay = backoffDelay(this.attempt, Math.random);
      if (spreadMs > 0) delay = Math.max(delay, Math.round(Math.random() * spreadMs));
      this.attempt += 1;
      this.setState("reconnecting", "offline, reconnecting in " + Math.ceil(delay / 1000) + " s");
      this.timer = window.setTimeout(() => this.connect(), delay);
    }

    // Drop whatever connection there is (a retry waiting, a socket that may be on a dead path) and
    // connect again at once; nothing to do once stopped for good.
    startOver() {
      if (this.timer !== null) {
        window.clearTimeout(this.timer);
        this.timer = null;
      } else if (this.socket !== null) {
        const socket = this.socket;
        this.socket = null;
        this.clearHandshakeTimer();
        this.unwatch();
        try {
          socket.close(1000, "network changed");
        } catch (error) {
          // already closing
        }
      } else {
        return; // ended, signed out, or a sign-out check under way
      }
      this.attempt = 0;
      this.connect();
    }

    // -- the watchdog of a steady stream: started on open, stopped on any close (no timer outlives a socket).
    watch() {
      if (!this.watched) return;
      this.unwatch();
      this.openedAt = this.lastMessageAt = monotonicNow();
      this.watchdog = window.setInterval(() => this.check(), WATCH_EVERY_MS);
    }

    unwatch() {
      if (this.watchdog === null) return;
      window.clearInterval(this.watchdog);
      this.watchdog = null;
    }

    heard() {
      if (this.watchdog === null) return;
      this.lastMessageAt = monotonicNow();
      if (this.state === "stale") this.setState("live", "live");
    }

    check() {
      if (this.socket === null) {
        this.unwatch();
        return;
      }
      const now = monotonicNow();
      const silent = now - this.lastMessageAt;
      const restartAfter = this.restartAfterMs * Math.pow(2, Math.min(this.silentRestarts, 5));
      if (this.restartAfterMs > 0 && silent >= restartAfter) {
        this.restart();
      } else if (this.staleAfterMs > 0 && silent >= this.staleAfterMs) {
        this.setState("stale", this.staleLabel(Math.floor(silent / 1000)));
      } else if (this.lastMessageAt - this.openedAt >= (this.staleAfterMs || this.restartAfterMs)) {
        this.attempt = 0; // still flowing well after the greeting sent on connect: a healthy connection
        this.silentRestarts = 0;
      }
    }

    // Silence for too long: drop this socket without waiting for its close (a stopped server never answers
    // the closing handshake), and reconnect through the backoff like any lost connection.
    restart() {
      const socket = this.socket;
      this.socket = null;
      this.silentRestarts += 1;
      this.unwatch();
      try {
        socket.close(1000, "silent");
      } catch (error) {
        // already closing: nothing more to do with it
      }
      this.retry();
    }

    async signedOut() {
      if (monotonicNow() - this.probedAt < PROBE_TRUSTED_MS) return false;
      const controller = new AbortController();
      const timeout = window.setTimeout(() => controller.abort(), PROBE_TIMEOUT_MS);
      try {
        const response = await fetch("/api/initial_state", {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
          signal: controller.signal,
        });
        if (response.status === 401) return true;
        if (response.ok) this.probedAt = monotonicNow();
        return false;
      } catch (error) {
        return false; // the server is down or does not answer: keep retrying
      } finally {
        window.clearTimeout(timeout);
      }
    }
  }

  window.Reactive = { LiveSocket: LiveSocket, socketUrl: socketUrl, backoffDelay: backoffDelay };
})();
