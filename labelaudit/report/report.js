// labelaudit report: sort, filter, keyboard navigation and the enlarged view.
// Data reaches the page only as escaped text and data attributes; this script sets textContent, never
// innerHTML, and fetches nothing.
(function () {
  "use strict";
  var list = document.getElementById("cases");
  if (!list) { return; }
  var cases = Array.prototype.slice.call(list.querySelectorAll("section.case"));
  var $ = function (id) { return document.getElementById(id); };
  var fCase = $("f-case"), fScore = $("f-score"), fKind = $("f-kind"), fFlagged = $("f-flagged");
  var sortKey = $("sort"), sortDir = $("sort-dir"), heat = $("heat"), shown = $("shown"), noMatch = $("no-match");
  var zoom = $("zoom"), zoomBody = $("zoom-body"), zoomTitle = $("zoom-title"), zoomInfo = $("zoom-info");
  var descending = true;
  var activeCase = null, activeTile = null;

  function num(el, key) { return parseFloat(el.getAttribute("data-" + key)) || 0; }

  function visibleCases() { return cases.filter(function (c) { return !c.hidden; }); }
  function visibleTiles(section) {
    return Array.prototype.slice.call(section.querySelectorAll(".tile")).filter(function (t) {
      return !t.classList.contains("hidden");
    });
  }

  function applyFilters() {
    var text = fCase.value.trim().toLowerCase();
    var min = parseFloat(fScore.value) || 0;
    var kind = fKind.value;
    var onlyFlagged = fFlagged.checked;
    var count = 0;
    cases.forEach(function (c) {
      var ok = (!text || c.getAttribute("data-case").toLowerCase().indexOf(text) !== -1) &&
        num(c, "score") >= min - 1e-9 && (!onlyFlagged || c.getAttribute("data-flagged") === "1") &&
        (!kind || (" " + c.getAttribute("data-kinds") + " ").indexOf(" " + kind + " ") !== -1);
      c.hidden = !ok;
      // with a kind chosen, show only that kind's slices (when the case has any; its kind may be the case's own)
      var narrow = ok && !!kind && hasTileOfKind(c, kind);
      c.querySelectorAll(".tile").forEach(function (t) {
        t.classList.toggle("hidden", narrow && t.getAttribute("data-kind") !== kind);
      });
      if (ok) { count += 1; }
    });
    shown.textContent = "showing " + count + " of " + cases.length + " cases";
    noMatch.hidden = count > 0 || cases.length === 0;
    if (activeCase && activeCase.hidden) { setActive(null, null); }
  }

  function hasTileOfKind(c, kind) {
    return !!c.querySelector('.tile[data-kind="' + kind + '"]');
  }

  function applySort() {
    var key = sortKey.value;
    var sign = descending ? -1 : 1;
    var sorted = cases.slice().sort(function (a, b) {
      var d;
      if (key === "case") {
        d = a.getAttribute("data-case").localeCompare(b.getAttribute("data-case"), undefined, { numeric: true });
      } else {
        d = num(a, key) - num(b, key);
      }
      if (d === 0) { d = num(b, "rank") - num(a, "rank"); }
      return sign * d;
    });
    sorted.forEach(function (c) { list.appendChild(c); });
    cases = sorted;
    sortDir.textContent = descending ? "↓" : "↑";
  }

  function setActive(section, tile) {
    if (activeCase) { activeCase.classList.remove("active"); }
    if (activeTile) { activeTile.classList.remove("active"); }
    activeCase = section; activeTile = tile;
    if (section) { section.classList.add("active"); }
    if (tile) { tile.classList.add("active"); tile.focus({ preventScroll: true }); }
    else if (section) { section.focus({ preventScroll: true }); }
    var target = tile || section;
    if (target) { target.scrollIntoView({ block: "nearest" }); }
  }

  function moveCase(step) {
    var vis = visibleCases();
    if (!vis.length) { return; }
    var i = activeCase ? vis.indexOf(activeCase) : -1;
    var next = vis[Math.min(vis.length - 1, Math.max(0, i < 0 ? 0 : i + step))];
    setActive(next, visibleTiles(next)[0] || null);
  }

  // every visible tile in display order, for stepping across case borders in the enlarged view
  function allTiles() {
    var out = [];
    visibleCases().forEach(function (c) { out = out.concat(visibleTiles(c)); });
    return out;
  }

  function moveTile(step) {
    var tiles = allTiles();
    if (!tiles.length) { return; }
    var i = activeTile ? tiles.indexOf(activeTile) : -1;
    var next = tiles[Math.min(tiles.length - 1, Math.max(0, i < 0 ? 0 : i + step))];
    setActive(next.closest("section.case"), next);
    if (zoom.open) { fillZoom(next); }
  }

  function fillZoom(tile) {
    var section = tile.closest("section.case");
    zoomBody.textContent = "";
    var view = tile.querySelector(".view");
    if (view) { zoomBody.appendChild(view.cloneNode(true)); }
    var caption = Array.prototype.map.call(tile.querySelectorAll("figcaption > span"), function (s) {
      return s.textContent;
    }).filter(Boolean);
    zoomTitle.textContent = "case " + section.getAttribute("data-case") + " · slice " + tile.getAttribute("data-slice");
    var files = Array.prototype.map.call(section.querySelectorAll(".where dt"), function (dt) {
      var dd = dt.nextElementSibling;
      return dt.textContent + ": " + (dd ? dd.textContent : "");
    });
    zoomInfo.textContent = caption.join(" · ") + (files.length ? " — " + files.join("; ") : "");
  }

  function openZoom(tile) {
    if (!tile || !tile.querySelector(".view:not(.none)")) { return; }
    setActive(tile.closest("section.case"), tile);
    fillZoom(tile);
    if (!zoom.open) { zoom.showModal(); }
  }

  // the noise overlay: on the worst slices (the default), on every slice, or off; `o` goes round
  var HEAT = ["worst", "all", "off"];
  function setHeat(state) {
    document.body.classList.toggle("heat-on", state === "all");
    document.body.classList.toggle("heat-off", state === "off");
    heat.value = state;
  }

  [fCase, fScore, fKind, fFlagged].forEach(function (el) {
    el.addEventListener("input", applyFilters);
    el.addEventListener("change", applyFilters);
  });
  sortKey.addEventListener("change", function () {
    descending = sortKey.value !== "case";
    applySort();
  });
  sortDir.addEventListener("click", function () { descending = !descending; applySort(); });
  heat.addEventListener("change", function () { setHeat(heat.value); });
  $("help").addEventListener("click", function () { $("keys").showModal(); });
  $("zoom-close").addEventListener("click", function () { zoom.close(); });
  $("zoom-prev").addEventListener("click", function () { moveTile(-1); });
  $("zoom-next").addEventListener("click", function () { moveTile(1); });
  zoom.addEventListener("click", function (ev) { if (ev.target === zoom) { zoom.close(); } });
  zoom.addEventListener("close", function () { if (activeTile) { activeTile.focus({ preventScroll: true }); } });
  // copy a viewer command: the Clipboard API where the page may use it, else the selection and execCommand
  function copyCommand(button) {
    var pre = button.parentNode.querySelector("pre.cmd");
    var text = pre ? pre.textContent : "";
    function done(ok) {
      button.textContent = ok ? "copied" : "selected: Ctrl+C";
      button.classList.toggle("done", ok);
      window.setTimeout(function () { button.textContent = "copy"; button.classList.remove("done"); }, 1500);
    }
    function fallback() {
      var range = document.createRange();
      range.selectNodeContents(pre);
      var sel = window.getSelection();
      sel.removeAllRanges(); sel.addRange(range);
      var ok = false;
      try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
      done(ok);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, fallback);
    } else { fallback(); }
  }

  list.addEventListener("click", function (ev) {
    var copy = ev.target.closest("button.copy");
    if (copy) { copyCommand(copy); return; }
    if (ev.target.closest("details, pre, a")) { return; }
    var tile = ev.target.closest(".tile");
    if (tile) { openZoom(tile); return; }
    var section = ev.target.closest("section.case");
    if (section) { setActive(section, null); }
  });

  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    var tag = (ev.target && ev.target.tagName) || "";
    if (/^(INPUT|SELECT|TEXTAREA)$/.test(tag)) {
      if (ev.key === "Escape") { ev.target.blur(); }
      return;
    }
    if ($("keys").open) { return; }
    var handled = true;
    switch (ev.key) {
      case "j": case "ArrowDown": if (zoom.open) { moveTile(1); } else { moveCase(1); } break;
      case "k": case "ArrowUp": if (zoom.open) { moveTile(-1); } else { moveCase(-1); } break;
      case "l": case "ArrowRight": moveTile(1); break;
      case "h": case "ArrowLeft": moveTile(-1); break;
      case "Enter": case " ":
        if (ev.target.closest && ev.target.closest("summary, button")) { handled = false; break; }
        if (zoom.open) { zoom.close(); } else { openZoom(activeTile || (activeCase && visibleTiles(activeCase)[0])); }
        break;
      case "o": setHeat(HEAT[(HEAT.indexOf(heat.value) + 1) % HEAT.length]); break;
      case "/": fCase.focus(); break;
      case "?": $("keys").showModal(); break;
      case "Escape": if (zoom.open) { zoom.close(); } else { setActive(null, null); } break;
      default: handled = false;
    }
    if (handled) { ev.preventDefault(); }
  });

  // wide screens have room beside the thumbnails: show where to look without a click
  if (window.matchMedia && window.matchMedia("(min-width: 1100px)").matches) {
    list.querySelectorAll("details.where").forEach(function (d) { d.open = true; });
  }
  applySort();
  applyFilters();
}());
