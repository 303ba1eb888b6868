/* cxr-triage pages: live updates without losing the reader's place, alerts for new flags (tab title, desktop
   notification, optional beep, the "N new flagged" bar), keyboard reading (j/k, Enter, v, r, ?), the whole row as
   a link, the theme choice, the heat map toggle and the full-size image. The pages work without this file; it only
   adds what plain HTML cannot do. Nothing here logs, stores or notifies patient data: the desktop notification
   says how many studies, never whose. */
(function () {
  "use strict";

  var STORE = { theme: "cxr-triage.theme", alerts: "cxr-triage.alerts", sound: "cxr-triage.sound" };

  function load(key) {
    try { return window.localStorage.getItem(key); } catch (error) { return null; }
  }
  function save(key, value) {
    try {
      if (value === null) window.localStorage.removeItem(key); else window.localStorage.setItem(key, value);
    } catch (error) { /* storage switched off: the choice lasts as long as the page */ }
  }
  function announce(text) {
    var live = document.getElementById("live-status");
    if (live) live.textContent = text;
  }
  function plural(count, one, many) { return count + " " + (count === 1 ? one : many); }
  // Keys are for reading, not for typing: a key pressed in a field (or with a modifier) is the field's.
  function ignoredKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return true;
    var field = event.target && event.target.closest ?
      event.target.closest("input, select, textarea, [contenteditable]") : null;
    if (field && !(field.tagName === "INPUT" && /^(checkbox|radio|button|submit|reset)$/i.test(field.type))) {
      return true;  // typing (a tick box takes no letters: after ticking Sound, j and k still move)
    }
    return !!document.querySelector("dialog[open]");
  }

  // --- theme: as the system (prefers-color-scheme), or the reader's choice, remembered -------------------------
  function applyTheme(value) {
    if (value === "light" || value === "dark") document.documentElement.setAttribute("data-theme", value);
    else document.documentElement.removeAttribute("data-theme");
  }
  function setupTheme() {
    var choice = document.querySelector(".theme-choice"), select = document.getElementById("theme-select");
    if (!choice || !select) return;
    var stored = load(STORE.theme);
    select.value = stored === "light" || stored === "dark" ? stored : "";
    choice.hidden = false;
    select.addEventListener("change", function () {
      save(STORE.theme, select.value || null);
      applyTheme(select.value);
    });
    window.addEventListener("storage", function (event) {  // the choice made in another tab
      if (event.key !== STORE.theme) return;
      select.value = event.newValue === "light" || event.newValue === "dark" ? event.newValue : "";
      applyTheme(select.value);
    });
  }

  // --- dialogs (keys help, full-size image): Esc closes them (the browser's own), so do Close and the backdrop ---
  function setupDialogs() {
    document.querySelectorAll("dialog").forEach(function (dialog) {
      var opener = null;
      dialog.addEventListener("click", function (event) {
        if (event.target === dialog || (event.target.closest && event.target.closest(".close-dialog"))) dialog.close();
      });
      dialog.addEventListener("close", function () {
        if (opener && document.contains(opener)) opener.focus({ preventScroll: true });
        opener = null;
      });
      dialog.openFrom = function () {
        if (!dialog.showModal || dialog.open) return;
        opener = document.activeElement;
        dialog.showModal();
      };
    });
    var help = document.getElementById("keys-help"), button = document.getElementById("keys-button");
    if (help && help.openFrom && button) {
      button.hidden = false;
      button.addEventListener("click", function () { help.openFrom(); });
    }
    return help && help.openFrom ? help : null;
  }

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

  // The picture at its natural size, in a dialog: the display image at full resolution (the link's target), or the
  // heat map when that is what is on screen (it exists at preview size only).
  function setupZoom() {
    var dialog = document.getElementById("zoom"), big = document.getElementById("zoom-img");
    if (!dialog || !big || !dialog.openFrom) return;
    document.addEventListener("click", function (event) {
      var link = event.target.closest ? event.target.closest("a.zoom-link") : null;
      if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      var img = link.querySelector("img");
      if (!img) return;
      event.preventDefault();
      big.src = img.classList.contains("showing-heatmap") ? (img.currentSrc || img.src) : link.href;
      big.alt = img.alt + " (full size)";
      dialog.openFrom();
    });
  }

  function now() { return new Date().toLocaleTimeString(); }

  // Poll the page's version token (data-version-url on #live-status); when it changes, fetch this page again and
  // hand the fresh copy of the region to `apply`. Only a change costs a page fetch (and, for a study, an audit row).
  // options.whileHidden(): poll on while the tab is hidden (the page is still fetched only on a change);
  // options.fetchOnlyWhenVisible: while hidden, never fetch the page (a change is fetched when the tab shows again);
  // options.onVersion(body): each version answer, parsed (the study page reads its alerts' count from it).
  // Returns refresh(force): check now (force: fetch the page even if the token looks unchanged).
  function pollForChanges(regionId, apply, options) {
    var region = document.getElementById(regionId);
    var live = document.getElementById("live-status");
    if (!region || !live || !live.dataset.versionUrl || !window.fetch || !window.DOMParser) return function () {};
    var interval = parseInt(live.dataset.pollMs, 10) || 2000;
    var version = region.dataset.version;
    var busy = false, again = false;

    async function refresh(force) {
      if (busy) { again = again || force === true; return; }
      if (document.hidden && !(options && options.whileHidden && options.whileHidden())) return;
      busy = true;
      try {
        var check = await fetch(live.dataset.versionUrl, {
          credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
        if (check.status === 401) {
          live.textContent = "You have been signed out: reload the page to sign in again.";
          return;
        }
        if (!check.ok) return;
        var body = await check.json();
        if (options && options.onVersion) {
          try { options.onVersion(body); } catch (error) { /* the alerts' trouble never stops the page's updates */ }
        }
        var current = body.version;
        if (current === version && force !== true) return;
        // A study fetched is a study viewed (audited): a hidden study page waits until the reader looks again.
        if (document.hidden && options && options.fetchOnlyWhenVisible) return;
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
        if (again) { again = false; refresh(true); }
      }
    }

    window.setInterval(refresh, interval);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
    return refresh;
  }

  // --- alerts: desktop notification (asked for only when the reader clicks), optional beep ----------------------
  function setupAlerts() {
    var tools = document.getElementById("reader-tools");
    var button = document.getElementById("alerts-toggle"), sound = document.getElementById("sound-toggle");
    if (!tools || !button || !sound) return { enabled: function () { return false; }, fire: function () {} };
    tools.hidden = false;
    var supported = "Notification" in window;
    var on = supported && load(STORE.alerts) === "on" && window.Notification.permission === "granted";
    var AudioContextClass = window.AudioContext || window.webkitAudioContext;
    var audio = null;

    function render() {
      button.textContent = on ? "Disable alerts" : "Enable alerts";
      button.dataset.on = on ? "true" : "false";
    }
    render();
    button.addEventListener("click", function () {
      if (on) {
        on = false;
        save(STORE.alerts, null);
        render();
        announce("Desktop alerts are off.");
        return;
      }
      if (!supported) { announce("This browser cannot show desktop alerts."); return; }
      if (window.Notification.permission === "denied") {
        announce("Desktop alerts are blocked for this site: allow notifications in the browser's site settings.");
        return;
      }
      Promise.resolve(window.Notification.requestPermission()).then(function (permission) {
        on = permission === "granted";
        save(STORE.alerts, on ? "on" : null);
        render();
        announce(on ? "Desktop alerts are on: each new flagged study raises one." : "Desktop alerts were not allowed.");
      });
    });

    // A short two-tone beep, made on the spot (no sound file). Browsers keep audio silent until the reader has
    // interacted with the page; ticking the box, or any click or key, unlocks it.
    function context() {
      if (!AudioContextClass) return null;
      audio = audio || new AudioContextClass();
      if (audio.state === "suspended") audio.resume();
      return audio;
    }
    function beep() {
      try {
        var ctx = context();
        if (!ctx) return false;
        var start = ctx.currentTime, osc = ctx.createOscillator(), gain = ctx.createGain();
        osc.type = "sine";
        osc.frequency.setValueAtTime(880, start);
        osc.frequency.setValueAtTime(660, start + 0.13);
        gain.gain.setValueAtTime(0.0001, start);
        gain.gain.exponentialRampToValueAtTime(0.25, start + 0.02);
        gain.gain.exponentialRampToValueAtTime(0.0001, start + 0.3);
        osc.connect(gain);
        gain.connect(ctx.destination);
        osc.start(start);
        osc.stop(start + 0.32);
        return true;
      } catch (error) {
        return false;
      }
    }
    sound.checked = load(STORE.sound) === "on";
    sound.addEventListener("change", function () {
      save(STORE.sound, sound.checked ? "on" : null);
      if (sound.checked) beep();  // what it will sound like, and the gesture that lets it play later
    });
    function unlock() {
      if (sound.checked) context();
      document.removeEventListener("pointerdown", unlock);
      document.removeEventListener("keydown", unlock);
    }
    document.addEventListener("pointerdown", unlock);
    document.addEventListener("keydown", unlock);

    function fire(count, onOpen) {
      var text = plural(count, "new flagged study", "new flagged studies");
      var notified = false;
      if (on && supported && window.Notification.permission === "granted") {
        try {
          var note = new window.Notification("cxr-triage: " + text, {
            body: "Triage support, not a diagnosis. Open the worklist to read it.", tag: "cxr-triage-new-flag" });
          note.onclick = function () { window.focus(); onOpen(); note.close(); };
          notified = true;
        } catch (error) { /* e.g. a browser that allows notifications only from a service worker */ }
      }
      var played = sound.checked ? beep() : false;
      document.dispatchEvent(new CustomEvent("cxr-triage:new-flags",
                                             { detail: { count: count, notified: notified, sound: played } }));
    }
    return { enabled: function () { return on; }, fire: fire };
  }

  // "(3) Worklist · …": the count of unread flagged studies in front of the tab's title.
  function titleCount(count) {
    var base = document.title.replace(/^\(\d+\)\s*/, "");
    document.title = count > 0 ? "(" + count + ") " + base : base;
  }

  // "12 min" as worklist/presentation.py's waiting() says it.
  function waitingText(seconds) {
    var minutes = Math.floor(Math.max(0, seconds) / 60);
    if (minutes < 1) return "<1 min";
    if (minutes < 60) return minutes + " min";
    var hours = Math.floor(minutes / 60);
    if (hours < 24) return hours + " h " + String(minutes % 60).padStart(2, "0") + " min";
    return Math.floor(hours / 24) + " d " + (hours % 24) + " h";
  }

  function setupLiveWorklist() {
    var region = document.getElementById("worklist-region");
    if (!region) return;
    var state = { selected: null, keepIndex: null, note: "", renderedAt: Date.now() };
    var help = document.getElementById("keys-help");

    function rows(root) {
      return Array.prototype.slice.call((root || region).querySelectorAll("tbody tr[data-study-uid]"));
    }
    function rowOf(uid) {
      return uid ? region.querySelector('tr[data-study-uid="' + CSS.escape(uid) + '"]') : null;
    }
    function unreadFlagged() {
      return rows().filter(function (row) {
        return row.classList.contains("flagged") && !row.classList.contains("read");
      }).map(function (row) { return row.dataset.studyUid; });
    }
    function flaggedTotal() { return parseInt(region.dataset.unreadFlagged, 10) || 0; }

    // The selection (j/k): a highlighted row whose study link has the keyboard focus.
    function select(row, how) {
      how = how || {};
      region.querySelectorAll("tr.selected").forEach(function (other) {
        if (other !== row) other.classList.remove("selected");
      });
      state.selected = row ? row.dataset.studyUid : null;
      if (!row) return;
      row.classList.add("selected");
      var link = row.querySelector("a.study-link");
      if (how.focus && link) link.focus({ preventScroll: true });
      if (how.scroll) row.scrollIntoView({ block: how.scroll });
    }
    function open(row, newTab) {
      var link = row && row.querySelector("a.study-link");
      if (!link) return;
      if (newTab) window.open(link.href, "_blank", "noopener");
      else window.location.assign(link.href);
    }

    // The reader's place: the focused link or button, else the first row still on screen, and where it stood.
    function place() {
      var active = document.activeElement;
      var key = active && region.contains(active) ? active.getAttribute("data-focus-key") : null;
      var ref = key ? (active.closest("tr[data-study-uid]") || null) : null;
      if (!ref) {
        ref = rows().find(function (row) { return row.getBoundingClientRect().bottom > 0; }) || null;
      }
      return { key: key, uid: ref ? ref.dataset.studyUid : null, top: ref ? ref.getBoundingClientRect().top : 0 };
    }
    function restore(saved) {
      if (saved.key) {
        var focusable = region.querySelector('[data-focus-key="' + CSS.escape(saved.key) + '"]');
        if (focusable) focusable.focus({ preventScroll: true });
      }
      var row = rowOf(saved.uid);
      if (row) window.scrollBy(0, row.getBoundingClientRect().top - saved.top);
    }

    // The "N new flagged" bar: new flags the reader cannot see (scrolled away); a click goes to the first one.
    var bar = document.getElementById("new-flags"), barButton = document.getElementById("new-flags-button");
    var pending = { count: 0, uids: [] };
    function firstNew() {
      var wanted = new Set(pending.uids);
      return rows().find(function (row) { return wanted.has(row.dataset.studyUid); }) || null;
    }
    function inView(row) {
      var box = row.getBoundingClientRect();
      return box.top >= 0 && box.bottom <= window.innerHeight;
    }
    function listTopInView() {
      var table = region.querySelector("table");
      return !table || table.getBoundingClientRect().top >= 0;
    }
    function hideBar() {
      pending = { count: 0, uids: [] };
      if (bar) bar.hidden = true;
    }
    function goToNew() {
      var row = firstNew();
      if (row) select(row, { focus: true, scroll: "center" });
      else window.scrollTo(0, 0);
      hideBar();
    }
    function showNew(count, uids) {
      if (!bar || !barButton) return;
      pending.count += count;
      pending.uids = pending.uids.concat(uids);
      var row = firstNew();
      if (row ? inView(row) : listTopInView()) { hideBar(); return; }  // the reader can see them already
      barButton.textContent = "▲ " + plural(pending.count, "new flagged study", "new flagged studies") + " — show";
      bar.hidden = false;
    }
    if (barButton) barButton.addEventListener("click", goToNew);
    var scrollTick = false;
    window.addEventListener("scroll", function () {
      if (!bar || bar.hidden || scrollTick) return;
      scrollTick = true;
      window.requestAnimationFrame(function () {
        scrollTick = false;
        var row = firstNew();
        if (row ? inView(row) : listTopInView()) hideBar();
      });
    }, { passive: true });

    var alerts = setupAlerts();
    var known = new Set(unreadFlagged());
    var lastTotal = flaggedTotal(), lastVisible = known.size;
    titleCount(lastTotal);

    var refresh = pollForChanges("worklist-region", function (region, fresh) {
      var before = new Set(rows().map(function (row) { return row.dataset.studyUid; }));
      var saved = place();
      if (state.keepIndex !== null) saved.key = null;  // r: the selection stays where the study was
      region.innerHTML = fresh.innerHTML;
      region.dataset.unreadFlagged = fresh.dataset.unreadFlagged || "0";
      state.renderedAt = Date.now();
      restore(saved);
      if (state.keepIndex !== null) {
        var all = rows();
        select(all[Math.min(state.keepIndex, all.length - 1)] || null, { focus: true, scroll: "nearest" });
        state.keepIndex = null;
      } else {
        var selected = rowOf(state.selected);
        if (selected) selected.classList.add("selected");
      }
      setupHeatmapToggles(region);
      var added = rows().filter(function (row) { return !before.has(row.dataset.studyUid); });
      added.forEach(function (row) { row.classList.add("arrived"); });

      // New flags: unread flagged rows not seen before, and any that arrived on other pages of this list.
      var visible = unreadFlagged(), total = flaggedTotal();
      var fresh_ = visible.filter(function (uid) { return !known.has(uid); });
      visible.forEach(function (uid) { known.add(uid); });
      var elsewhere = Math.max(0, (total - lastTotal) - (visible.length - lastVisible));
      var count = fresh_.length + elsewhere;
      lastTotal = total;
      lastVisible = visible.length;
      titleCount(total);
      var message = state.note + (added.length ? plural(added.length, "study", "studies") + " added. " : "");
      state.note = "";
      if (count > 0) {
        message = plural(count, "new flagged study", "new flagged studies") + ". " + message;
        showNew(count, fresh_);
        alerts.fire(count, goToNew);
      }
      return message + "List updated at " + now() + ".";
    }, { whileHidden: alerts.enabled });

    // Waiting times count on between updates (from the server's figure, not this computer's clock).
    window.setInterval(function () {
      var elapsed = (Date.now() - state.renderedAt) / 1000;
      region.querySelectorAll("td[data-waiting-s]").forEach(function (cell) {
        var text = waitingText(parseFloat(cell.dataset.waitingS) + elapsed);
        if (cell.textContent !== text) cell.textContent = text;
      });
    }, 15000);

    // The whole row opens the study; links, buttons and a text selection inside it keep their own meaning.
    region.addEventListener("click", function (event) {
      if (event.button !== 0 || event.defaultPrevented) return;
      if (event.target.closest("a, button, input, select, textarea, label, summary")) return;
      var row = event.target.closest("tbody tr[data-study-uid]");
      if (!row || String(window.getSelection ? window.getSelection() : "")) return;
      open(row, event.ctrlKey || event.metaKey || event.shiftKey);
    });
    region.addEventListener("focusin", function (event) {
      var row = event.target.closest("tbody tr[data-study-uid]");
      if (row && row.dataset.studyUid !== state.selected) select(row);
    });

    async function toggleRead(row) {
      var uid = row.dataset.studyUid, wasRead = row.classList.contains("read");
      try {
        var response = await fetch("/api/studies/" + encodeURIComponent(uid) + "/read", {
          method: wasRead ? "DELETE" : "PUT", credentials: "same-origin", headers: { Accept: "application/json" } });
        if (!response.ok) {
          announce("The read state could not be changed (HTTP " + response.status + ").");
          return;
        }
        state.note = wasRead ? "Marked unread. " : "Marked read. ";
        if (!wasRead) state.keepIndex = rows().indexOf(row);  // read: it moves down; the next study takes its place
        announce(state.note);
        refresh(true);
      } catch (error) {
        announce("The read state could not be changed: the server did not answer.");
      }
    }

    document.addEventListener("keydown", function (event) {
      if (ignoredKey(event)) return;
      var all = rows(), row = rowOf(state.selected);
      if (event.key === "j" || event.key === "k") {
        if (!all.length) return;
        var index = row ? all.indexOf(row) + (event.key === "j" ? 1 : -1) : 0;
        select(all[Math.max(0, Math.min(all.length - 1, index))], { focus: true, scroll: "nearest" });
      } else if (event.key === "Enter") {
        var active = document.activeElement;
        if (!row || (active && active !== document.body && active.closest("a, button, summary"))) return;
        open(row, false);  // the focus is elsewhere (after a click, say): Enter still opens the selected study
      } else if (event.key === "v" || event.key === "r") {
        if (!row) { announce("Select a study first (j / k)."); return; }
        if (event.key === "r") { toggleRead(row); } else {
          var viewer = row.querySelector("a.viewer-link");
          if (viewer) viewer.click(); else announce("No image viewer is configured (TRIAGE_VIEWER_URL).");
        }
      } else if (event.key === "?") {
        if (help && help.openFrom) help.openFrom();
      } else {
        return;
      }
      event.preventDefault();
    });
  }

  // One poll of the study's version (GET /api/studies/{uid}/version) a tick: it refreshes the page when the study
  // changes and feeds the new-flag alerts (`studyAlerts`, from setupStudyAlerts) the worklist's count it carries.
  function setupLiveStudy(studyAlerts) {
    pollForChanges("study-region", function (region, fresh) {
      var active = document.activeElement;
      var focusedId = active && region.contains(active) ? active.id : "";
      region.innerHTML = fresh.innerHTML;
      setupHeatmapToggles(region);
      var again = focusedId ? document.getElementById(focusedId) : null;
      if (again) again.focus({ preventScroll: true });
      return "Study updated at " + now() + ".";
    }, studyAlerts ? { whileHidden: studyAlerts.enabled, onVersion: studyAlerts.onVersion,
                       fetchOnlyWhenVisible: true } : undefined);
  }

  // While a study is open, flags raised elsewhere still reach the reader: the study's version poll carries the
  // worklist's count of unread flagged studies (unread_flagged); a rise updates the tab title, shows "N new flagged —
  // back to the worklist" and fires the same alerts as the list (notification, sound). A count, not a list: a flag
  // raised while another is read in the same poll interval is not announced here, but the list shows it first.
  // Returns { enabled, onVersion } for setupLiveStudy's poll (which runs while hidden when alerts are enabled), or
  // null off the study page.
  function setupStudyAlerts() {
    var bar = document.getElementById("new-flags"), link = document.getElementById("new-flags-link");
    var text = document.getElementById("new-flags-text");
    if (!document.body.classList.contains("page-study") || !bar || !link || !text) return null;
    var back = document.getElementById("back-link");
    if (back) link.href = back.href;  // the list the reader came from, in its order
    var alerts = setupAlerts();
    var last = parseInt(bar.dataset.unreadFlagged, 10) || 0, fresh = 0;
    titleCount(last);

    function onVersion(body) {
      var count = body ? body.unread_flagged : undefined;
      if (typeof count !== "number") return;
      if (count > last) {
        fresh += count - last;
        text.textContent = plural(fresh, "new flagged study", "new flagged studies");
        bar.hidden = false;
        announce(plural(count - last, "new flagged study", "new flagged studies") + " on the worklist.");
        alerts.fire(count - last, function () { window.location.assign(link.href); });
      }
      last = count;
      titleCount(count);
    }
    return { enabled: alerts.enabled, onVersion: onVersion };
  }

  // The study page's keys: j / k the next and previous study of the list the reader came from, v the viewer,
  // r read / unread (the page's own button), b back to the list, ? the keys.
  function setupStudyKeys() {
    if (!document.body.classList.contains("page-study")) return;
    var targets = { j: "next-link", k: "prev-link", v: "viewer-link", r: "mark-button", b: "back-link" };
    document.addEventListener("keydown", function (event) {
      if (ignoredKey(event)) return;
      var help = document.getElementById("keys-help");
      if (event.key === "?" && help && help.openFrom) {
        help.openFrom();
      } else if (Object.prototype.hasOwnProperty.call(targets, event.key)) {
        var target = document.getElementById(targets[event.key]);
        if (!target) return;
        target.click();
      } else {
        return;
      }
      event.preventDefault();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupTheme();
    setupDialogs();
    setupHeatmapToggles(document);
    setupZoom();
    setupLiveWorklist();
    setupLiveStudy(setupStudyAlerts());
    setupStudyKeys();
  });
})();
