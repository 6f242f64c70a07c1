// The header's "live" badge tells the truth about the page's event stream: live while it is
// open, "reconnecting" while the browser retries.
(function () {
  "use strict";
  function mark(state, text) {
    const badge = document.getElementById("live-badge");
    if (!badge) return;
    badge.dataset.state = state;
    badge.textContent = text;
  }
  // A page without a stream (e.g. /go/about) has nothing to be live about.
  document.addEventListener("DOMContentLoaded", () => {
    const badge = document.getElementById("live-badge");
    if (badge && !document.querySelector("[sse-connect]")) badge.hidden = true;
  });
  document.addEventListener("htmx:sseOpen", () => mark("live", "live"));
  document.addEventListener("htmx:sseError", () => mark("reconnecting", "reconnecting"));
})();
