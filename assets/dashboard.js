// "Trigger with options": a card's ▶… link opens its form in the page's dialog (outside the
// live region, so a card's change never closes it); Cancel closes it. Without script the
// link is a page of its own.
(function () {
  "use strict";
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.trigger-options");
    const dialog = document.getElementById("trigger-dialog");
    if (link && dialog && window.htmx) {
      event.preventDefault();
      htmx.ajax("GET", link.getAttribute("href"), { target: dialog, swap: "innerHTML" })
        .then(() => { if (!dialog.open) dialog.showModal(); });
      return;
    }
    const cancel = event.target.closest("#trigger-dialog .dialog-close");
    if (cancel) {
      event.preventDefault();
      cancel.closest("dialog").close();
    }
  });
})();

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
