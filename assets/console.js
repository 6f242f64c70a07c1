// The run page's console: appends arrive as `console` events whose id is the byte offset
// after them. The page remembers the offset it shows and drops what it already has, so a
// reconnect that lost its Last-Event-ID cannot duplicate lines. Follow-the-tail is the
// reader's: it stops when they scroll up and resumes when they scroll back to the end.
(function () {
  "use strict";
  function start() {
    const pre = document.getElementById("console");
    const follow = document.getElementById("follow");
    if (!pre) return;
    let shown = Number(pre.dataset.end || 0);
    const nearEnd = () => pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 24;
    let scrolling = false;
    function tail() {
      if (follow && follow.checked) {
        scrolling = true;
        pre.scrollTop = pre.scrollHeight;
        requestAnimationFrame(() => { scrolling = false; });
      }
    }
    function advance(end) {
      if (end > shown) shown = end;
      pre.dataset.end = String(shown);
      tail();
    }
    pre.addEventListener("scroll", () => {
      if (scrolling || !follow) return;
      follow.checked = nearEnd();
    });
    if (follow) follow.addEventListener("change", tail);
    pre.addEventListener("htmx:sseBeforeMessage", (e) => {
      const end = Number(e.detail.lastEventId);
      if (!(end > shown)) { e.preventDefault(); return; } // all of it is shown already
      const tpl = document.createElement("template");
      tpl.innerHTML = e.detail.data;
      const first = tpl.content.querySelector(".ln");
      if (!first || Number(first.dataset.end) > shown) return; // all new: htmx appends it
      // Part of it is shown already: append only the lines past what we have.
      e.preventDefault();
      tpl.content.querySelectorAll(".ln").forEach((ln) => {
        if (Number(ln.dataset.end) <= shown) ln.remove();
      });
      pre.append(tpl.content);
      advance(end);
    });
    pre.addEventListener("htmx:sseMessage", (e) => advance(Number(e.detail.lastEventId)));
    tail();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
