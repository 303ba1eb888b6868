/* The reader's theme choice (light or dark; none = as the system), applied before the page is drawn so that it
   never flashes in the other theme. Loaded without defer on purpose: it is tiny, and worklist.js has the control. */
(function () {
  "use strict";
  try {
    var theme = window.localStorage.getItem("cxr-triage.theme");
    if (theme === "light" || theme === "dark") document.documentElement.setAttribute("data-theme", theme);
  } catch (error) {
    /* storage switched off: follow the system */
  }
})();
