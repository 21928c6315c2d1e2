// The clock page: the time from the page, then every tick from /time/tic/. A late or reordered tick (a little
// older than the one shown) never moves it back; a tick much older is the clock being corrected, and shown.
"use strict";

(function () {
  // Ticks come every 0.5 s: one older by up to this much is late (delivery, reordering), not a correction.
  const LATE_WINDOW_MS = 2000;
  const element = document.getElementById("clock");
  const zone = document.getElementById("clock-zone");
  let shown = JSON.parse(document.getElementById("initial-tick").textContent);

  function accept(tick) {
    if (typeof tick.time !== "string" || typeof tick.iso !== "string") return;
    const at = Date.parse(tick.iso);
    if (Number.isNaN(at)) return;
    // Dropping every older tick would freeze the page on one tick from the future (a beat host ahead, NTP
    // stepping a clock back) until real time caught up: a day of skew, a day frozen.
    const behind = Date.parse(shown.iso) - at;
    if (behind > 0 && behind <= LATE_WINDOW_MS) return;
    shown = tick;
    element.textContent = tick.time;
    element.setAttribute("datetime", tick.iso);
    if (typeof tick.zone === "string") zone.textContent = tick.zone;
  }

  const socket = new window.Reactive.LiveSocket({
    path: () => "/time/tic/",
    stateElement: document.getElementById("connection"),
    announceElement: document.getElementById("connection-announce"),
    // Ticks are a steady stream: silence means a frozen clock, whatever the TCP connection says.
    staleAfterMs: 3000,
    restartAfterMs: 10000,
    staleLabel: (seconds) => "no ticks for " + seconds + " s",
    // The server closes a clock socket with these when its account ended (as /ws/ does): never reconnect.
    finalCodes: { 4003: "account disabled: signed out", 4004: "account removed" },
    onMessage: (message) => {
      if (message.type === "clock.tick") accept(message);
    },
  });
  socket.start();
})();
