// Kairos dashboard: live updates without a reload. The server says on /live (EventSource)
// when a projection moved on; this script fetches the same page again and swaps in each
// element marked data-live, by id. A part holding the keyboard focus (a form being filled in)
// is left as it is until an update finds it without focus. No third-party code; the page works
// without this script (it is only not live).
"use strict";
(function () {
  const status = document.getElementById("live-status");
  const source = document.body && document.body.dataset.liveSource;
  if (!source || !window.EventSource) {
    if (status) status.textContent = "Live updates: not available in this browser.";
    return;
  }
  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      const r = await fetch(window.location.href, { headers: { "X-Kairos-Live": "1" }, credentials: "same-origin" });
      if (r.redirected || r.status === 401) { window.location.assign("/sign-in"); return; }
      if (!r.ok) return;
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      document.querySelectorAll("[data-live]").forEach(function (el) {
        const fresh = el.id && doc.getElementById(el.id);
        // A part the user is working in (focus inside it) waits for the next update.
        if (el.contains(document.activeElement) && document.activeElement !== document.body) return;
        if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
      });
      document.body.dataset.liveUpdated = String(Date.now());
      if (status) status.textContent = "Live updates: on (updated " + new Date().toLocaleTimeString() + ")";
    } catch (e) {
      if (status) status.textContent = "Live updates: retrying…";
    } finally {
      busy = false;
      if (again) { again = false; refresh(); }
    }
  }
  const es = new EventSource(source);
  es.addEventListener("open", function () { if (status) status.textContent = "Live updates: on"; });
  es.addEventListener("update", refresh);
  es.addEventListener("error", function () { if (status) status.textContent = "Live updates: reconnecting…"; });
  // Leaving the page frees the connection at once (a browser keeps few open per server).
  window.addEventListener("pagehide", function () { es.close(); });
})();
