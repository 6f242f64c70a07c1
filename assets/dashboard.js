// The dashboard's per-viewer state: the search box. The server's blocks are the same for
// every viewer; this hides the cards whose name does not contain the search text (and the
// group headings left with no card shown), and re-applies it after every live change.
(function () {
  "use strict";
  const region = () => document.getElementById("dashboard");
  const search = () => document.getElementById("pipeline-search");

  function apply() {
    const dashboard = region();
    if (!dashboard) return;
    const text = (search().value || "").trim().toLowerCase();
    let heading = null, shown = 0;
    const close = () => { if (heading) heading.hidden = text !== "" && shown === 0; };
    for (const child of dashboard.children) {
      if (child.classList.contains("group-heading")) {
        close();
        heading = child; shown = 0;
      } else if (child.classList.contains("pipeline-card")) {
        const match = text === "" || (child.dataset.name || "").includes(text);
        child.hidden = !match;
        if (match) shown++;
      }
    }
    close();
  }

  document.addEventListener("DOMContentLoaded", () => {
    const box = search();
    if (!box) return;
    try { box.value = sessionStorage.getItem("ferrocd.dashboard.search") || ""; } catch (_) { /* off */ }
    box.addEventListener("input", () => {
      try { sessionStorage.setItem("ferrocd.dashboard.search", box.value); } catch (_) { /* off */ }
      apply();
    });
    new MutationObserver(apply).observe(region(), { childList: true });
    apply();
  });
})();
