/* cxr-triage worklist: live updates without losing the reader's place, and the heat map toggle.
   The pages work without this file; it only adds what plain HTML cannot do. */
(function () {
  "use strict";

  function setupHeatmapToggles(root) {
    root.querySelectorAll("button.heatmap-toggle").forEach(function (button) {
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

  function now() { return new Date().toLocaleTimeString(); }

  // Poll the page's version token (data-version-url on #live-status); when it changes, fetch this page again and
  // hand the fresh copy of the region to `apply`. Only a change costs a page fetch (and, for a study, an audit row).
  function pollForChanges(regionId, apply) {
    var region = document.getElementById(regionId);
    var live = document.getElementById("live-status");
    if (!region || !live || !live.dataset.versionUrl || !window.fetch || !window.DOMParser) return;
    var interval = parseInt(live.dataset.pollMs, 10) || 2000;
    var version = region.dataset.version;
    var busy = false;

    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        var check = await fetch(live.dataset.versionUrl, {
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
        var fresh = doc.getElementById(regionId);
        if (!fresh) return;
        var banners = document.getElementById("banners"), freshBanners = doc.getElementById("banners");
        if (banners && freshBanners && banners.innerHTML !== freshBanners.innerHTML) {
          banners.innerHTML = freshBanners.innerHTML;  // e.g. the UNTRAINED MODEL banner with the first result
        }
        live.textContent = apply(region, fresh);
        version = region.dataset.version = fresh.dataset.version || current;
      } catch (error) {
        /* a network hiccup: the next tick tries again */
      } finally {
        busy = false;
      }
    }

    window.setInterval(refresh, interval);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  }

  function setupLiveWorklist() {
    function rows(root) {
      return Array.prototype.slice.call(root.querySelectorAll("tr[data-study-uid]"));
    }
    // The reader's place: the focused link or button, else the first row still on screen, and where it stood.
    function place(region) {
      var active = document.activeElement;
      var key = active && region.contains(active) ? active.getAttribute("data-focus-key") : null;
      var ref = key ? (active.closest("tr[data-study-uid]") || null) : null;
      if (!ref) {
        ref = rows(region).find(function (row) { return row.getBoundingClientRect().bottom > 0; }) || null;
      }
      return { key: key, uid: ref ? ref.dataset.studyUid : null, top: ref ? ref.getBoundingClientRect().top : 0 };
    }
    function restore(region, saved) {
      if (saved.key) {
        var focusable = region.querySelector('[data-focus-key="' + CSS.escape(saved.key) + '"]');
        if (focusable) focusable.focus({ preventScroll: true });
      }
      var row = saved.uid ? region.querySelector('tr[data-study-uid="' + CSS.escape(saved.uid) + '"]') : null;
      if (row) window.scrollBy(0, row.getBoundingClientRect().top - saved.top);
    }

    pollForChanges("worklist-region", function (region, fresh) {
      var before = new Set(rows(region).map(function (row) { return row.dataset.studyUid; }));
      var saved = place(region);
      region.innerHTML = fresh.innerHTML;
      restore(region, saved);
      var added = rows(region).filter(function (row) { return !before.has(row.dataset.studyUid); });
      added.forEach(function (row) { row.classList.add("arrived"); });
      return (added.length ? added.length + (added.length === 1 ? " study" : " studies") + " added. " : "") +
        "List updated at " + now() + ".";
    });
  }

  function setupLiveStudy() {
    pollForChanges("study-region", function (region, fresh) {
      var active = document.activeElement;
      var focusedId = active && region.contains(active) ? active.id : "";
      region.innerHTML = fresh.innerHTML;
      setupHeatmapToggles(region);
      var again = focusedId ? document.getElementById(focusedId) : null;
      if (again) again.focus({ preventScroll: true });
      return "Study updated at " + now() + ".";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupHeatmapToggles(document);
    setupLiveWorklist();
    setupLiveStudy();
  });
})();
