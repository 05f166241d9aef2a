// activebeam report: renders the candidate grid one page at a time and the embedding map.
// Data: window.ACTIVEBEAM_REPORT, from data.js. No network, no libraries: works from file://.
(function () {
  "use strict";
  var data = window.ACTIVEBEAM_REPORT || {candidates: [], page_size: 60, map: null};
  var cards = data.candidates;
  var pageSize = data.page_size;
  var pages = Math.max(1, Math.ceil(cards.length / pageSize));
  var current = 0;
  // Why a candidate was picked: its selection's components (transforms/select), named for a reader.
  var COMPONENTS = {score: "uncertainty (ranked by)", distance_to_selected: "distance to nearest pick",
                    rule: "admitted as", predicted_boxes: "predicted boxes",
                    label_seconds: "est. labelling seconds"};
  var RULES = {0: "most uncertain", 1: "farthest from the picks"};

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = text; }
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined) { return "–"; }
    if (typeof v === "number") { return Math.abs(v) >= 1000 || v === Math.round(v) ? String(v) : v.toPrecision(4); }
    return String(v);
  }

  function row(table, name, value, cls) {
    var tr = el("tr", cls);
    tr.appendChild(el("td", null, name));
    tr.appendChild(el("td", "v", fmt(value)));
    table.appendChild(tr);
  }

  function card(c) {
    var div = el("div", "card");
    div.id = "rank-" + c.rank;
    var pic = el("div", "pic");
    if (c.thumb) {
      var a = el("a");
      a.href = c.full || c.thumb;
      a.target = "_blank";
      var img = el("img");
      img.src = c.thumb;
      img.alt = c.name + " frame " + c.index;
      img.loading = "eager";
      a.appendChild(img);
      pic.appendChild(a);
    } else {
      pic.appendChild(el("div", "missing", "no picture: " + (c.error || "unknown")));
    }
    div.appendChild(pic);
    var head = el("div", "head");
    head.appendChild(el("span", "rank", "#" + c.rank));
    head.appendChild(el("span", "score", "score " + fmt(c.score)));
    div.appendChild(head);
    var where = c.name + (c.t !== null && c.t !== undefined ? " @ " + c.t.toFixed(2) + " s (frame " + c.index + ")" : "");
    var src = el("div", "src", where);
    src.title = c.src;
    div.appendChild(src);
    var table = el("table");
    var comps = c.components || {};
    Object.keys(comps).forEach(function (k) {
      var value = comps[k];
      if (k === "rule") { value = RULES[value] || value; }
      if (k === "distance_to_selected" && value >= 2) { value = "first pick"; }
      row(table, COMPONENTS[k] || k, value, "comp");
    });
    var scores = c.scores || {};
    Object.keys(scores).forEach(function (k) { if (!(k in comps)) { row(table, k, scores[k]); } });
    row(table, "predicted class", c.cls);
    if (c.dup > 1) { row(table, "identical frames", c.dup); }
    if (c.boxes) { row(table, "boxes", c.boxes); }
    if (c.objects) {
      var objects = el("div", "objects", c.objects);
      div.insertBefore(objects, src.nextSibling);
    }
    div.appendChild(table);
    return div;
  }

  function pager(container) {
    container.textContent = "";
    var prev = el("button", "prev", "‹ previous");
    prev.disabled = current === 0;
    prev.onclick = function () { go(current - 1); };
    var next = el("button", "next", "next ›");
    next.disabled = current >= pages - 1;
    next.onclick = function () { go(current + 1); };
    var first = (current * pageSize) + 1;
    var last = Math.min(cards.length, (current + 1) * pageSize);
    var info = el("span", "page-info", "page " + (current + 1) + " of " + pages +
                  " (candidates " + (cards.length ? first : 0) + "–" + last + " of " + cards.length + ")");
    container.appendChild(prev);
    container.appendChild(info);
    container.appendChild(next);
  }

  function render(page, target) {
    current = Math.min(Math.max(0, page), pages - 1);
    var grid = document.getElementById("grid");
    grid.textContent = "";
    var frag = document.createDocumentFragment();
    cards.slice(current * pageSize, (current + 1) * pageSize).forEach(function (c) {
      frag.appendChild(card(c));
    });
    grid.appendChild(frag);
    pager(document.getElementById("pager-top"));
    pager(document.getElementById("pager-bottom"));
    if (target) {
      var t = document.getElementById("rank-" + target);
      if (t) { t.classList.add("target"); t.scrollIntoView(); }
    }
    document.body.setAttribute("data-page", String(current + 1));
  }

  function go(page) { location.hash = "page=" + (page + 1); }

  function fromHash() {
    var h = location.hash.replace(/^#/, "");
    var m = /^page=(\d+)$/.exec(h);
    if (m) { render(parseInt(m[1], 10) - 1); return; }
    m = /^rank-(\d+)$/.exec(h);
    if (m) {
      var rank = parseInt(m[1], 10);
      for (var i = 0; i < cards.length; i++) {
        if (cards[i].rank === rank) { render(Math.floor(i / pageSize), rank); return; }
      }
    }
    if (!document.body.hasAttribute("data-page")) { render(0); }
  }

  function drawMap() {
    var canvas = document.getElementById("map");
    var map = data.map;
    if (!canvas || !map) { if (canvas) { canvas.style.display = "none"; } return; }
    var ctx = canvas.getContext("2d");
    var all = map.pool.concat(map.candidates);
    var xs = all.map(function (p) { return p[0]; }), ys = all.map(function (p) { return p[1]; });
    // Bounds from the 1st to the 99th percentile: a few outliers must not squash the map
    // (points beyond are drawn on the edge).
    function bounds(v) {
      var s = v.slice().sort(function (a, b) { return a - b; });
      var lo = s[Math.floor(0.01 * (s.length - 1))], hi = s[Math.ceil(0.99 * (s.length - 1))];
      return hi > lo ? [lo, hi] : [s[0], s[s.length - 1]];
    }
    var bx = bounds(xs), by = bounds(ys);
    var x0 = bx[0], x1 = bx[1], y0 = by[0], y1 = by[1];
    function clamp(v) { return Math.min(1, Math.max(0, v)); }
    var pad = 12, w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
    function px(p) {
      return [pad + (x1 > x0 ? clamp((p[0] - x0) / (x1 - x0)) : 0.5) * w,
              pad + (y1 > y0 ? 1 - clamp((p[1] - y0) / (y1 - y0)) : 0.5) * h];
    }
    ctx.fillStyle = "rgba(154,165,177,0.55)";
    map.pool.forEach(function (p) { var q = px(p); ctx.fillRect(q[0] - 1.5, q[1] - 1.5, 3, 3); });
    ctx.fillStyle = "#e67e22";
    ctx.strokeStyle = "#7a3d0b";
    var placed = map.candidates.map(function (p) {
      var q = px(p);
      ctx.beginPath(); ctx.arc(q[0], q[1], 4, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      return [q[0], q[1], p[2]];
    });
    canvas.setAttribute("data-points", String(all.length));
    canvas.onclick = function (ev) {
      var r = canvas.getBoundingClientRect();
      var x = (ev.clientX - r.left) * canvas.width / r.width, y = (ev.clientY - r.top) * canvas.height / r.height;
      var best = null, bestD = 100;
      placed.forEach(function (q) {
        var d = (q[0] - x) * (q[0] - x) + (q[1] - y) * (q[1] - y);
        if (d < bestD) { bestD = d; best = q[2]; }
      });
      if (best !== null) { location.hash = "rank-" + best; }
    };
  }

  window.addEventListener("hashchange", fromHash);
  fromHash();
  drawMap();
  document.body.setAttribute("data-ready", "1");
}());
