// Coretex dashboard: the only script besides htmx. No inline script anywhere (the content
// security policy allows none).
(function () {
  "use strict";
  // Live parts: the API's event stream (proxied as /ui/stream, with the session's key) tells
  // when a job finished; each element marked data-live then refreshes itself (htmx trigger
  // `coretex:job from:body`, throttled). Without the stream, they still poll every few seconds.
  if (document.querySelector("[data-live]") && window.EventSource) {
    var source = new EventSource("/ui/stream");
    source.addEventListener("job", function () {
      document.body.dispatchEvent(new CustomEvent("coretex:job"));
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }
  // "Select all" checkboxes: toggles every checkbox of the same form.
  document.addEventListener("change", function (e) {
    var box = e.target;
    if (!box.matches || !box.matches("input[data-select-all]")) return;
    box.form.querySelectorAll("input[type=checkbox][name]").forEach(function (c) {
      c.checked = box.checked;
    });
  });
})();
