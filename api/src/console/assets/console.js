// flotilla console: the live parts. Every element with `data-live` is
// re-rendered by the scheduler every 2 s (its URL answers the fragment);
// nothing else. Served from /ui/static, the only script the CSP allows.
"use strict";
(function () {
  const PERIOD_MS = 2000;
  for (const region of document.querySelectorAll("[data-live]")) {
    const url = region.getAttribute("data-live");
    let busy = false;
    // A region someone is typing in (a steering form's reason) waits: its
    // forms are part of the live fragment, re-rendered from the run's state.
    const typing = function () {
      if (region.contains(document.activeElement)) return true;
      for (const input of region.querySelectorAll("input[type=text]")) {
        if (input.value !== "") return true;
      }
      return false;
    };
    setInterval(async function () {
      if (busy || document.hidden || typing()) return;
      busy = true;
      try {
        const answer = await fetch(url, { credentials: "same-origin", redirect: "manual" });
        if (answer.ok) {
          region.innerHTML = await answer.text();
          region.dataset.refreshed = String(Date.now());
        } else if (answer.type === "opaqueredirect" || answer.status === 401) {
          // The session ended: the page itself goes to the sign-in form.
          window.location.reload();
        }
      } catch (error) {
        // The scheduler is away for a moment; the next tick tries again.
      } finally {
        busy = false;
      }
    }, PERIOD_MS);
  }
})();
