// The clock page: the time from the page, then every tick from /time/tic/; a late tick never moves it back.
"use strict";

(function () {
  const element = document.getElementById("clock");
  let shown = JSON.parse(document.getElementById("initial-tick").textContent);

  function accept(tick) {
    if (typeof tick.time !== "string" || typeof tick.iso !== "string") return;
    if (Date.parse(tick.iso) < Date.parse(shown.iso)) return;
    shown = tick;
    element.textContent = tick.time;
    element.setAttribute("datetime", tick.iso);
  }

  const socket = new window.Reactive.LiveSocket({
    path: () => "/time/tic/",
    stateElement: document.getElementById("connection"),
    onMessage: (message) => {
      if (message.type === "clock.tick") accept(message);
    },
  });
  socket.start();
})();
