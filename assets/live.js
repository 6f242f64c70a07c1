// What every live page shares (DESIGN.md rule 8: no update is lost in the browser).
//
// 1. New content is live at once. htmx processes swapped-in content (and so registers the
//    listeners of any `sse-swap` inside it) only when the swap settles, 20 ms later by
//    default; an event arriving in between would reach no listener. We use no settling
//    transitions, so settling happens in the same task as the swap.
//
// 2. Live row regions. An element with `data-live-rows="NAME"` holds rows, each with an `id`
//    and a `data-order` (text that sorts as the server sorts). Its rows come and go one by
//    one, and no listener belongs to a row that a swap could replace: the listeners live on
//    the page's EventSource, registered before any event can need them.
//    - event NAME (data: every row) replaces all rows;
//    - event `data-live-added` (data: one row) and the event named by a row's id (data: that
//      row) replace the row with that id, or insert it where `data-order` puts it;
//    - a row's event with empty data removes the row (if there is one).
//    A row's event is registered as soon as the page knows the row (in the first page, in
//    NAME, or added), which is before the server can send it: a stream sends a row's own
//    event only for a row it has already sent.
//
// 3. The header's "live" badge tells the truth about the stream: live while it is open,
//    "reconnecting" while the browser retries.
//
// 4. What the Content-Security-Policy stopped is kept in this tab's sessionStorage
//    ("ferrocd.csp", one line each, across the pages of the tab) and warned about in the
//    console: a page that needs something the policy forbids is a bug to see, not to guess.
(function () {
  "use strict";
  htmx.config.defaultSettleDelay = 0;

  document.addEventListener("securitypolicyviolation", (e) => {
    const line = `${e.violatedDirective} blocked ${e.blockedURI || "inline"} on ${e.documentURI} ` +
      `(${e.sourceFile || "?"}:${e.lineNumber || "?"})`;
    console.warn("Content-Security-Policy: " + line);
    try {
      const kept = sessionStorage.getItem("ferrocd.csp") || "";
      sessionStorage.setItem("ferrocd.csp", kept + line + "\n");
    } catch (_) { /* storage may be off */ }
  });

  // EventSource -> the event names we listen to on it (each once).
  const listening = new WeakMap();

  function parseRows(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    return Array.from(template.content.children);
  }

  function place(region, row) {
    const old = document.getElementById(row.id);
    if (old) old.remove();
    const order = row.dataset.order || "";
    let before = null;
    for (const child of region.children) {
      if ((child.dataset.order || "") > order) { before = child; break; }
    }
    region.insertBefore(row, before);
    htmx.process(row);
  }

  function attach(region, source) {
    let names = listening.get(source);
    if (!names) { names = new Set(); listening.set(source, names); }
    const regionId = region.id;
    const here = () => document.getElementById(regionId);
    const on = (name, handler) => {
      if (!name || names.has(name)) return;
      names.add(name);
      source.addEventListener(name, handler);
    };
    const watch = (row) => on(row.id, (e) => {
      const target = here();
      if (!target) return;
      if (e.data.trim() === "") {
        const gone = document.getElementById(row.id);
        if (gone && gone.parentElement === target) gone.remove();
      } else {
        upsert(target, e.data);
      }
    });
    const upsert = (target, html) => {
      for (const row of parseRows(html)) {
        if (!row.id) continue;
        watch(row);
        place(target, row);
      }
    };
    on(region.dataset.liveRows, (e) => {
      const target = here();
      if (!target) return;
      const rows = parseRows(e.data).filter((row) => row.id);
      rows.forEach(watch);
      target.replaceChildren(...rows);
      rows.forEach((row) => htmx.process(row));
    });
    on(region.dataset.liveAdded, (e) => {
      const target = here();
      if (target) upsert(target, e.data);
    });
    for (const row of region.children) if (row.id) watch(row);
  }

  // `htmx:sseOpen` comes before the stream's first event, on every (re)connect; a new
  // EventSource (after a refused reconnect) gets every listener again.
  document.addEventListener("htmx:sseOpen", (e) => {
    const source = e.detail && e.detail.source;
    if (!source) return;
    e.target.querySelectorAll("[data-live-rows]").forEach((region) => attach(region, source));
  });

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
