// Auto-refresh for the status page: every data-refresh-s seconds while the tab is visible, fetch this same URL and
// swap in the new <main> (the header, with the asset form someone may be typing in, stays). A tick that falls while
// the tab is hidden is skipped and made up once when it is shown again. Without JavaScript the page is complete;
// it just does not move.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh-s")) || 0;
  var controls = document.querySelector(".refresh-controls");
  var toggle = document.getElementById("refresh-toggle");
  var button = document.getElementById("refresh-now");
  var status = document.getElementById("refresh-status");
  if (!seconds || !controls || !toggle || !button || !status || !window.fetch || !window.DOMParser) {
    return;
  }
  controls.hidden = false;
  var busy = false;
  var missed = false;

  function say(text) {
    status.textContent = text;
  }

  function openDetails(root) {
    var open = [];
    root.querySelectorAll("details[open]").forEach(function (node, index) { open.push(index); });
    return open;
  }

  function refresh() {
    if (busy) {
      return;
    }
    busy = true;
    missed = false;
    fetch(window.location.href, {headers: {Accept: "text/html"}, cache: "no-store", credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        var current = document.querySelector("main");
        if (!fresh || !current) {
          throw new Error("no figures in the answer");
        }
        var open = openDetails(current);
        var details = fresh.querySelectorAll("details");
        open.forEach(function (index) { if (details[index]) { details[index].open = true; } });
        current.replaceWith(document.adoptNode(fresh));
        say("Updated " + new Date().toLocaleTimeString() + ".");
      })
      .catch(function (error) {
        say("Refresh failed (" + error.message + "); the figures shown are from before.");
      })
      .then(function () {
        busy = false;
      });
  }

  setInterval(function () {
    if (!toggle.checked) {
      return;
    }
    if (document.hidden) {
      missed = true;
      return;
    }
    refresh();
  }, seconds * 1000);

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && missed && toggle.checked) {
      refresh();
    }
  });

  button.addEventListener("click", refresh);
}());
