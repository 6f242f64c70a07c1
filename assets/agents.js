// The agents page's per-viewer state: selection, filter and sort order. The server's
// fragments are the same for every viewer; this re-applies the viewer's choices after each
// live swap, so an update never clears a checkbox, a filter or a sort.
(function () {
  "use strict";
  const selected = new Set();
  let sort = null; // { key, dir: 1 | -1 }
  try { sort = JSON.parse(sessionStorage.getItem("ferrocd.agents.sort")); } catch (_) { sort = null; }

  const body = () => document.getElementById("agents-body");
  const rows = () => Array.from(body().querySelectorAll(":scope > tr"));
  const filterText = () => (document.getElementById("agent-filter").value || "").trim().toLowerCase();

  function sortValue(row, key) {
    const cell = row.querySelector('[data-col="' + key + '"]');
    if (!cell) return "";
    return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim().toLowerCase();
  }

  function compare(a, b) {
    const header = document.querySelector('th[data-sort-key="' + sort.key + '"]');
    const numeric = header && header.dataset.sortType === "number";
    let x = sortValue(a, sort.key), y = sortValue(b, sort.key);
    const by = numeric ? (Number(x) - Number(y)) * sort.dir : x.localeCompare(y) * sort.dir;
    if (by !== 0) return by;
    // Ties keep the server's order, so a sorted page does not depend on when rows arrived.
    const p = a.dataset.order || "", q = b.dataset.order || "";
    return p < q ? -1 : p > q ? 1 : 0;
  }

  let observer = null;
  function apply() {
    const tbody = body();
    if (!tbody) return;
    if (observer) observer.disconnect(); // our own re-ordering is not a live update
    let list = rows();
    if (sort) {
      list.sort(compare);
      list.forEach((row) => tbody.appendChild(row));
    }
    const filter = filterText();
    const present = new Set();
    let shownSelected = 0, shown = 0;
    for (const row of list) {
      const uuid = row.dataset.uuid;
      present.add(uuid);
      row.hidden = filter !== "" && !(row.dataset.filter || "").includes(filter);
      const box = row.querySelector(".agent-select");
      if (box) box.checked = selected.has(uuid);
      if (!row.hidden) { shown++; if (selected.has(uuid)) shownSelected++; }
    }
    for (const uuid of Array.from(selected)) if (!present.has(uuid)) selected.delete(uuid);
    const all = document.getElementById("select-all");
    if (all) {
      all.checked = shown > 0 && shownSelected === shown;
      all.indeterminate = shownSelected > 0 && shownSelected < shown;
    }
    document.getElementById("selected-count").textContent = shownSelected + " selected";
    document.querySelectorAll("[data-needs-selection]").forEach((b) => { b.disabled = shownSelected === 0; });
    document.querySelectorAll("th[data-sort-key]").forEach((th) => {
      if (sort && th.dataset.sortKey === sort.key) th.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
    if (observer) observer.observe(tbody, { childList: true });
  }

  function start() {
    const tbody = body();
    if (!tbody) return;
    // Any live change (a row replaced, added or removed, or the whole body) changes the
    // body's children.
    observer = new MutationObserver(apply);
    document.addEventListener("change", (e) => {
      const t = e.target;
      if (t.classList && t.classList.contains("agent-select")) {
        if (t.checked) selected.add(t.value); else selected.delete(t.value);
        apply();
      } else if (t.id === "select-all") {
        for (const row of rows()) if (!row.hidden) {
          if (t.checked) selected.add(row.dataset.uuid); else selected.delete(row.dataset.uuid);
        }
        apply();
      }
    });
    document.getElementById("agent-filter").addEventListener("input", apply);
    document.addEventListener("click", (e) => {
      const th = e.target.closest && e.target.closest("th[data-sort-key]");
      if (!th) return;
      const key = th.dataset.sortKey;
      sort = sort && sort.key === key ? { key, dir: -sort.dir } : { key, dir: 1 };
      sessionStorage.setItem("ferrocd.agents.sort", JSON.stringify(sort));
      apply();
    });
    apply();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
