// imip-manager's live updates, served as /static/manager.js (the
// Content-Security-Policy allows no inline script; the events URL is the
// script element's data-events). The page works without them: when a change
// of this user arrives, fetch this page again and swap its content in place,
// without a reload (nothing else on the page is lost). Also on each (re)connect of the
// stream, for a change made while it was not connected. data-live-events on
// <body> counts the events received.
(function () {
  var me = document.currentScript;
  if (!me) return;
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var busy = false, again = false, seen = 0;
  var refresh = function () {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("content");
        if (fresh) document.getElementById("content").innerHTML = fresh.innerHTML;
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; refresh(); } });
  };
  var es = new EventSource(me.getAttribute("data-events") || "/events");
  es.addEventListener("open", refresh);
  ["queue.changed", "object.changed", "freebusy.changed"].forEach(function (k) {
    es.addEventListener(k, function () {
      seen += 1;
      document.body.setAttribute("data-live-events", String(seen));
      refresh();
    });
  });
})();
