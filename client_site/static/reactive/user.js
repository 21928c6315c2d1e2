// The live user page: the profile from the page, then from the user's own room (/ws/). Text only
// (textContent), and an update older than the one shown never replaces it.
"use strict";

(function () {
  const ACCOUNT_DISABLED = 4003;
  const ACCOUNT_REMOVED = 4004;
  let shown = JSON.parse(document.getElementById("initial-profile").textContent);

  function setText(id, value) {
    const element = document.getElementById(id);
    if (element) element.textContent = value == null ? "" : String(value);
  }

  function render(profile) {
    setText("first-name", profile.first_name || profile.username);
    setText("full-first-name", profile.first_name);
    setText("last-name", profile.last_name);
    setText("username", profile.username);
    setText("email", profile.email);
    setText("version", profile.version);
  }

  // Signed out, disabled or removed: the page keeps no personal data on screen (a shared machine).
  function forget() {
    ["first-name", "full-first-name", "last-name", "username", "email", "version"].forEach((id) => setText(id, ""));
    const initial = document.getElementById("initial-profile");
    if (initial) initial.remove();
    shown = { key: shown.key, version: shown.version };
  }

  function showNotice(text) {
    const notice = document.getElementById("notice");
    notice.textContent = text;
    notice.hidden = false;
  }

  // Versions only order the changes of one key. A different key is another version space (a legacy
  // replica, versioned by SQS timestamps, taken over by the master's key): the server pushes only what
  // it applied, so that change is the newer one. The profile sent on (re)connect is read from the
  // database after every change the page was sent, so it is the current truth whatever its version.
  function accept(profile, current) {
    if (!profile || typeof profile.version !== "number") return;
    if (!current && profile.key === shown.key && profile.version < shown.version) return;
    if (profile.deleted) {
      shown = Object.assign({}, shown, { key: profile.key, version: profile.version, deleted: true });
      showNotice("This account was removed on the master.");
      return;
    }
    shown = profile;
    render(profile);
    if (profile.is_active === false) showNotice("This account was disabled on the master: you are signed out.");
  }

  const socket = new window.Reactive.LiveSocket({
    // The session's own room: no username in the path, so a rename missed while offline cannot point the
    // reconnect at a stale room, and names like ".." cannot be resolved away by the URL parser.
    path: () => "/ws/",
    stateElement: document.getElementById("connection"),
    announceElement: document.getElementById("connection-announce"),
    // The server sends a heartbeat every 20 s (client_site/web/freshness.py): three missed, and the
    // connection is taken for dead (a network that dropped it says nothing) and made again.
    restartAfterMs: 60000,
    onStop: forget,
    finalCodes: {
      [ACCOUNT_DISABLED]: "account disabled: signed out",
      [ACCOUNT_REMOVED]: "account removed",
    },
    onMessage: (message) => {
      if (message.type === "profile") accept(message.profile, true);
      else if (message.type === "user.changed") accept(message.profile, false);
    },
  });
  socket.start();
})();
