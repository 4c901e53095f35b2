// The atlas comparison page: reads the JSON payload and builds the page with plain DOM calls.
// Every string from the data is set as textContent, never parsed as markup.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("compare-data").textContent);

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "n/a";
    if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(digits === undefined ? 3 : digits);
    return String(v);
  }
  function fill(table, columns, rows) {
    var head = el("tr");
    columns.forEach(function (c) { head.appendChild(el("th", c[1])); });
    table.tHead.appendChild(head);
    rows.forEach(function (row) {
      var tr = el("tr");
      columns.forEach(function (c) { tr.appendChild(el("td", fmt(row[c[0]]))); });
      table.tBodies[0].appendChild(tr);
    });
  }
  // red (fell) through white to blue (rose)
  function colour(v, spread) {
    if (v === null) return "#eeeeee";
    var t = Math.max(-1, Math.min(1, v / spread));
    var end = t < 0 ? [178, 24, 43] : [33, 102, 172];
    var a = Math.abs(t);
    var rgb = end.map(function (c) { return Math.round(255 + (c - 255) * a); });
    return "rgb(" + rgb.join(",") + ")";
  }

  document.getElementById("title").textContent = "a: " + data.a + "  vs  b: " + data.b;
  document.getElementById("subtitle").textContent =
    data.shape[0] + " layers x " + data.shape[1] + " heads, " + data.correlations.length + " detectors compared";
  fill(document.getElementById("correlations"),
       [["detector", "detector"], ["spearman", "Spearman"], ["k", "k"], ["top_overlap", "top overlap"],
        ["crossed", "crossed"], ["n_heads", "heads"]], data.correlations);
  var only = [];
  if (data.only_a.length) only.push("run only in a (skipped): " + data.only_a.join(", "));
  if (data.only_b.length) only.push("run only in b (skipped): " + data.only_b.join(", "));
  document.getElementById("only").textContent = only.join("; ");
  document.getElementById("moved-note").textContent = data.moved.length
    ? "Heads over a threshold in one atlas only, or " + data.moved_ranks + " or more ranks apart (rank change: positive when the head rose in b)."
    : "No head crossed a threshold or moved " + data.moved_ranks + " or more ranks.";
  fill(document.getElementById("moved"),
       [["detector", "detector"], ["layer", "layer"], ["head", "head"], ["score_a", "score a"], ["score_b", "score b"],
        ["rank_a", "rank a"], ["rank_b", "rank b"], ["rank_change", "rank change"], ["crossed", "crossed"]], data.moved);

  var spread = 0;
  Object.keys(data.delta).forEach(function (name) {
    data.delta[name].forEach(function (row) { row.forEach(function (v) { if (v !== null) spread = Math.max(spread, Math.abs(v)); }); });
  });
  spread = spread || 1;
  var scale = document.getElementById("scale");
  scale.appendChild(el("span", fmt(-spread)));
  scale.appendChild(el("span", "", "bar"));
  scale.appendChild(el("span", "+" + fmt(spread)));
  var maps = document.getElementById("deltas");
  Object.keys(data.delta).forEach(function (name) {
    var box = el("div");
    box.appendChild(el("h3", name));
    var grid = el("div", null, "grid");
    grid.style.gridTemplateColumns = "repeat(" + data.shape[1] + ", 14px)";
    data.delta[name].forEach(function (row, layer) {
      row.forEach(function (v, head) {
        var cell = el("div", null, "cell");
        cell.style.background = colour(v, spread);
        cell.title = "L" + layer + "H" + head + ": " + fmt(v, 4);
        grid.appendChild(cell);
      });
    });
    box.appendChild(grid);
    maps.appendChild(box);
  });
})();
