/* cxr-triage worklist: live updates without losing the reader's place, and the heat map toggle.
   The pages work without this file; it only adds what plain HTML cannot do. */
(function () {
  "use strict";

  function setupHeatmapToggles() {
    document.querySelectorAll("button.heatmap-toggle").forEach(function (button) {
      var img = document.getElementById(button.getAttribute("aria-controls"));
      if (!img || !img.dataset.heatmapSrc) return;
      button.hidden = false;
      var link = button.parentElement.querySelector(".heatmap-link");
      if (link) link.hidden = true;
      button.addEventListener("click", function () {
        var on = button.getAttribute("aria-pressed") !== "true";
        img.src = on ? img.dataset.heatmapSrc : img.dataset.previewSrc;
        img.alt = on ? img.dataset.heatmapAlt : img.dataset.previewAlt;
        img.classList.toggle("showing-heatmap", on);
        button.setAttribute("aria-pressed", on ? "true" : "false");
        button.textContent = on ? "Hide heat map" : "Show heat map";
      });
    });
  }

  function setupLiveWorklist() {
    var region = document.getElementById("worklist-region");
    var live = document.getElementById("live-status");
    if (!region || !live || !window.fetch || !window.DOMParser) return;
    var interval = parseInt(live.dataset.pollMs, 10) || 2000;
    var version = region.dataset.version;
    var busy = false;

    function rows(root) {
      return Array.prototype.slice.call(root.querySelectorAll("tr[data-study-uid]"));
    }
    function byUid(uid) {
      return region.querySelector('tr[data-study-uid="' + CSS.escape(uid) + '"]');
    }
    // The reader's place: the focused link or button, else the first row still on screen, and where it stood.
    function place() {
      var active = document.activeElement;
      var key = active && region.contains(active) ? active.getAttribute("data-focus-key") : null;
      var ref = key ? (active.closest("tr[data-study-uid]") || null) : null;
      if (!ref) {
        ref = rows(region).find(function (row) { return row.getBoundingClientRect().bottom > 0; }) || null;
      }
      return { key: key, uid: ref ? ref.dataset.studyUid : null, top: ref ? ref.getBoundingClientRect().top : 0 };
    }
    function restore(saved) {
      if (saved.key) {
        var focusable = region.querySelector('[data-focus-key="' + CSS.escape(saved.key) + '"]');
        if (focusable) focusable.focus({ preventScroll: true });
      }
      var row = saved.uid ? byUid(saved.uid) : null;
      if (row) window.scrollBy(0, row.getBoundingClientRect().top - saved.top);
    }

    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        var check = await fetch("/api/worklist/version", {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
        if (check.status === 401) {
          live.textContent = "You have been signed out: reload the page to sign in again.";
          return;
        }
        if (!check.ok) return;
        var current = (await check.json()).version;
        if (current === version) return;
        var page = await fetch(window.location.href, {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } });
        if (!page.ok) return;
        var doc = new DOMParser().parseFromString(await page.text(), "text/html");
        var fresh = doc.getElementById("worklist-region");
        if (!fresh) return;
        var banners = document.getElementById("banners"), freshBanners = doc.getElementById("banners");
        if (banners && freshBanners && banners.innerHTML !== freshBanners.innerHTML) {
          banners.innerHTML = freshBanners.innerHTML;  // e.g. the UNTRAINED MODEL banner with the first result
        }
        var before = new Set(rows(region).map(function (row) { return row.dataset.studyUid; }));
        var saved = place();
        region.innerHTML = fresh.innerHTML;
        version = region.dataset.version = fresh.dataset.version || current;
        restore(saved);
        var added = rows(region).filter(function (row) { return !before.has(row.dataset.studyUid); });
        added.forEach(function (row) { row.classList.add("arrived"); });
        live.textContent = (added.length ? added.length + (added.length === 1 ? " study" : " studies") +
          " added. " : "") + "List updated at " + new Date().toLocaleTimeString() + ".";
      } catch (error) {
        /* a network hiccup: the next tick tries again */
      } finally {
        busy = false;
      }
    }

    window.setInterval(refresh, interval);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupHeatmapToggles();
    setupLiveWorklist();
  });
})();
