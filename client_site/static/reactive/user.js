// The live user page: the profile from the page, then from /ws/<username>. Text only (textContent), and
// an update older than the one shown never replaces it.
"use strict";

(function () {
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

  function showNotice(text) {
    const notice = document.getElementById("notice");
    notice.textContent = text;
    notice.hidden = false;
  }

  function accept(profile) {
    if (!profile || typeof profile.version !== "number") return;
    if (profile.version < shown.version) return;
    if (profile.deleted) {
      shown = Object.assign({}, shown, { version: profile.version, deleted: true });
      showNotice("This account was removed on the master.");
      return;
    }
    shown = profile;
    render(profile);
  }

  const socket = new window.Reactive.LiveSocket({
    // The room follows renames: a reconnect after a rename uses the new username.
    path: () => "/ws/" + encodeURIComponent(shown.username),
    stateElement: document.getElementById("connection"),
    finalCodes: { [ACCOUNT_REMOVED]: "account removed" },
    onMessage: (message) => {
      if (message.type === "profile" || message.type === "user.changed") accept(message.profile);
    },
  });
  socket.start();
})();
