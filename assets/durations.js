// Durations of runs still going tick once a second (the server renders them once).
(function () {
  "use strict";
  function format(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m " + pad(s % 60) + "s";
  }
  setInterval(() => {
    document.querySelectorAll(".ticking[data-since]").forEach((el) => {
      el.textContent = format(Date.now() - Number(el.dataset.since));
    });
  }, 1000);
})();
