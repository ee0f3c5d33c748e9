"use strict";
// Draws the case file from the JSON in #fw-data. Every value from the data goes into the
// page through textContent or setAttribute (never as markup); links only point at anchors
// this script builds from indices.
(function () {
  var started = performance.now();
  var errorBox = document.getElementById("fw-error");
  window.addEventListener("error", function (e) {
    errorBox.hidden = false;
    errorBox.textContent = "The report script failed: " + e.message;
    document.body.setAttribute("data-rendered", "error");
  });

  var D = JSON.parse(document.getElementById("fw-data").textContent);
  var root = document.getElementById("report");
  var SVGNS = "http://www.w3.org/2000/svg";
  var PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf"];
  var SEVERITY_RANK = { info: 0, low: 1, medium: 2, high: 3, critical: 4 };
  var SEVERITY_COLOR = { info: "#7a8591", low: "#3b7dd8", medium: "#e8890c", high: "#c92a2a",
    critical: "#8e0c1c" };

  // ---- small DOM helpers ----
  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (k === "text") e.textContent = attrs[k];
        else if (k === "class") e.className = attrs[k];
        else e.setAttribute(k, attrs[k]);
      }
    }
    for (var i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }
  function add(parent, child) {
    if (child === null || child === undefined) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(parent, c); }); return; }
    parent.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function s(tag, attrs, text) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function tip(node, text) { node.appendChild(s("title", {}, text)); return node; }
  function link(href, text) { return el("a", { href: href, text: text }); }
  function color(key) {
    var h = 0;
    for (var i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }
  function ms(ts) {
    if (!ts) return NaN;
    // RFC 3339 with microseconds: keep milliseconds for Date.parse.
    return Date.parse(ts.length > 24 ? ts.slice(0, 23) + "Z" : ts);
  }
  function fmtTs(ts) { return ts ? ts.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-"; }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "-";
    var u = ["B", "KB", "MB", "GB", "TB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  function fmtDur(sec) {
    if (sec === null || sec === undefined || isNaN(sec)) return "-";
    if (sec < 60) return sec.toFixed(1) + " s";
    var m = Math.floor(sec / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
    if (d) return d + " d " + (h % 24) + " h";
    if (h) return h + " h " + (m % 60) + " min";
    return m + " min " + Math.round(sec % 60) + " s";
  }
  function sev(v) { return el("span", { class: "sev sev-" + v, text: v }); }
  function pct(x) { return (x * 100).toFixed(0) + "%"; }
  function section(id, title, note) {
    var sec = el("section", { id: id }, el("h2", { text: title }));
    if (note) sec.appendChild(el("p", { class: "note", text: note }));
    root.appendChild(sec);
    toc.appendChild(link("#" + id, title));
    return sec;
  }
  function kv(pairs) {
    var t = el("table", { class: "kv" });
    pairs.forEach(function (p) { t.appendChild(el("tr", null, el("th", { text: p[0] }), el("td", { class: "wrap" }, p[1]))); });
    return t;
  }

  // ---- sortable, filterable table: rows are built once into a fragment; sorting moves
  // them, filtering hides them by a precomputed lowercase text ----
  function table(columns, rows, opts) {
    opts = opts || {};
    var wrap = el("div", { class: "tablebox" });
    var input = el("input", { class: "filter", type: "search", placeholder: "Filter " + (opts.what || "rows") + "…" });
    var count = el("span", { class: "count" });
    var tbl = el("table", { class: opts.cls || "" });
    var thead = el("tr");
    var tbody = el("tbody");
    tbl.appendChild(el("thead", null, thead));
    tbl.appendChild(tbody);
    var trs = [], texts = [];
    var frag = document.createDocumentFragment();
    rows.forEach(function (row, i) {
      var tr = el("tr");
      if (opts.rowId) tr.id = opts.rowId(row, i);
      columns.forEach(function (c) {
        var v = c.render ? c.render(row, i) : row[c.key];
        var td = el("td", { class: c.cls || "" });
        add(td, v === null || v === undefined ? "-" : v);
        tr.appendChild(td);
      });
      if (opts.onClick) tr.addEventListener("click", function () { opts.onClick(row, i); });
      trs.push(tr);
      frag.appendChild(tr);
    });
    tbody.appendChild(frag);
    trs.forEach(function (tr) { texts.push(tr.textContent.toLowerCase()); });
    function showCount(n) { count.textContent = n === rows.length ? rows.length + " rows" : n + " of " + rows.length + " rows"; }
    showCount(rows.length);
    var order = rows.map(function (_, i) { return i; });
    columns.forEach(function (c, ci) {
      var th = el("th", { text: c.label });
      var dir = 0;
      th.addEventListener("click", function () {
        dir = dir === 1 ? -1 : 1;
        Array.prototype.forEach.call(thead.children, function (h) { h.className = ""; });
        th.className = dir === 1 ? "sorted-asc" : "sorted-desc";
        var key = c.sort || function (r) { return r[c.key]; };
        order.sort(function (a, b) {
          var x = key(rows[a]), y = key(rows[b]);
          if (x === y) return a - b;
          if (x === null || x === undefined) return 1;
          if (y === null || y === undefined) return -1;
          return (x < y ? -1 : 1) * dir;
        });
        var f = document.createDocumentFragment();
        order.forEach(function (i) { f.appendChild(trs[i]); });
        tbody.appendChild(f);
      });
      thead.appendChild(th);
    });
    var timer = null;
    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        var q = input.value.trim().toLowerCase(), n = 0;
        trs.forEach(function (tr, i) { var hit = !q || texts[i].indexOf(q) >= 0; tr.hidden = !hit; if (hit) n++; });
        showCount(n);
      }, 120);
    });
    wrap.clearFilter = function () {
      if (!input.value) return;
      input.value = "";
      trs.forEach(function (tr) { tr.hidden = false; });
      showCount(rows.length);
    };
    if (rows.length > 5) add(wrap, [input, count]);
    wrap.appendChild(rows.length > 15 ? el("div", { class: "scroll" }, tbl) : tbl);
    if (!rows.length) wrap.appendChild(el("p", { class: "note", text: opts.empty || "None." }));
    return wrap;
  }

  function flowLinks(idx) {
    if (!idx || !idx.length) return "-";
    return idx.map(function (i, k) { return [k ? " " : "", link("#f-" + i, "flow " + i)]; });
  }
  // The names a flow carries: SNI, the DNS answer's name, the RDP cookie.
  function flowNames(f) {
    var names = [f.sni, f.dns_name, f.rdp && f.rdp.cookie].filter(function (n, i, all) { return n && all.indexOf(n) === i; });
    return names.length ? names.join(" · ") : "-";
  }
  function flowText(f) {
    var ep = function (ip, p) { return (ip.indexOf(":") >= 0 ? "[" + ip + "]" : ip) + ":" + p; };
    return f.proto + " " + ep(f.src_ip, f.src_port) + " → " + ep(f.dst_ip, f.dst_port);
  }

  // ---- time axis shared by the time charts ----
  // The packets' span, widened to sessions and findings outside it (a session feed may
  // start before the capture).
  var T0 = ms(D.meta.first_ts), T1 = ms(D.meta.last_ts);
  function widen(ts) { var t = ms(ts); if (isNaN(t)) return; if (!(t >= T0)) T0 = t; if (!(t <= T1)) T1 = t; }
  D.events.forEach(function (e) { widen(e.ts); });
  D.accounts.forEach(function (a) { a.sessions.forEach(function (v) { widen(v.ts); }); });
  if (isNaN(T0)) T0 = 0;
  if (!(T1 > T0)) T1 = T0 + 1000;
  function timeScale(x0, x1) {
    return function (t) { return Math.min(x1, Math.max(x0, x0 + (x1 - x0) * (t - T0) / (T1 - T0))); };
  }
  function timeAxis(g, x0, x1, y, scale) {
    g.appendChild(s("line", { class: "axis", x1: x0, x2: x1, y1: y, y2: y }));
    var span = T1 - T0;
    for (var i = 0; i <= 5; i++) {
      var t = T0 + span * i / 5, x = scale(t);
      var iso = new Date(t).toISOString();
      var label = span < 86400000 ? iso.slice(11, 19) : span < 30 * 86400000 ? iso.slice(5, 16).replace("T", " ") : iso.slice(0, 10);
      g.appendChild(s("line", { class: "grid", x1: x, x2: x, y1: 0, y2: y }));
      g.appendChild(s("text", { x: x, y: y + 14, "text-anchor": i === 0 ? "start" : i === 5 ? "end" : "middle" }, label));
    }
  }

  // ---- per-account charts ----
  function timeline(a) {
    var sessions = a.sessions, rd = a.rd.map(function (i) { return D.rd_sessions[i]; });
    var rdFlows = a.rd_flows.map(function (i) { return D.rd_flows[i]; });
    var events = a.events.map(function (i) { return D.events[i]; });
    var kinds = [];
    events.forEach(function (e) { if (kinds.indexOf(e.kind) < 0) kinds.push(e.kind); });
    var lanes = [["VPN sessions (public address)", "vpn"], ["Remote desktop", "rd"]].concat(kinds.map(function (k) { return [k, k]; }));
    var W = 1100, L = 190, LH = 26, H = lanes.length * LH + 24;
    var scale = timeScale(L, W - 10);
    var svgEl = s("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "timeline", role: "img" });
    svgEl.appendChild(s("title", {}, "Timeline of " + a.id));
    var g = s("g", {});
    svgEl.appendChild(g);
    timeAxis(g, L, W - 10, lanes.length * LH + 4, scale);
    lanes.forEach(function (lane, li) {
      var y = li * LH;
      g.appendChild(s("text", { x: 0, y: y + 16 }, lane[0]));
      g.appendChild(s("line", { class: "grid", x1: L, x2: W - 10, y1: y + LH, y2: y + LH }));
      if (lane[1] === "vpn") {
        sessions.forEach(function (v, i) {
          var t = ms(v.ts), next = i + 1 < sessions.length ? ms(sessions[i + 1].ts) : T1;
          var x = scale(t), w = Math.max(3, scale(next) - x);
          var label = v.public_ip + (v.country ? " " + v.country : "");
          g.appendChild(tip(s("rect", { x: x, y: y + 4, width: w, height: LH - 8, fill: color(v.public_ip), opacity: 0.8, class: "vpn" }),
            fmtTs(v.ts) + " " + label + " (" + v.source + ")"));
          if (w > label.length * 6.5) g.appendChild(s("text", { x: x + 3, y: y + 17, fill: "#fff" }, label));
        });
      } else if (lane[1] === "rd") {
        // Sessions a finding reports, with the role the detector gave the host; then
        // remote-desktop flows no finding cites.
        rd.forEach(function (r) {
          var x = scale(ms(r.ts)), w = Math.max(3, scale(ms(r.ts) + r.duration_s * 1000) - x);
          var label = (r.app || "?") + " (host " + r.role + ")";
          g.appendChild(tip(s("rect", { x: x, y: y + 4, width: w, height: LH - 8, fill: color(r.app || "?"), class: "rd" }),
            fmtTs(r.ts) + " " + label + ", " + fmtDur(r.duration_s) + ", peer " + (r.peer || "-") + " (" + r.via + ")"));
          if (w > label.length * 6.5) g.appendChild(s("text", { x: x + 3, y: y + 17, fill: "#fff" }, label));
        });
        rdFlows.forEach(function (r) {
          var x = scale(ms(r.ts)), w = Math.max(3, scale(ms(r.ts) + r.duration_s * 1000) - x);
          g.appendChild(tip(s("rect", { x: x, y: y + 8, width: w, height: LH - 16, fill: color(r.app), opacity: 0.6, class: "rd" }),
            fmtTs(r.ts) + " " + r.app + " flow " + r.src + " → " + r.dst + ", " + fmtDur(r.duration_s) + " (no finding)"));
        });
      } else {
        events.forEach(function (e) {
          if (e.kind !== lane[1]) return;
          var x = scale(ms(e.ts));
          g.appendChild(tip(s("rect", { x: x - 2, y: y + 4, width: 4, height: LH - 8, fill: SEVERITY_COLOR[e.severity] || "#555", class: "finding" }),
            fmtTs(e.ts) + " " + e.kind + "/" + e.reason + " [" + e.severity + "] " + e.summary));
        });
      }
    });
    return el("div", { class: "chart" }, el("h4", { text: "Timeline" }), svgEl,
      el("p", { class: "note", text: "Bars: VPN sessions coloured by public address (until the next session), remote-desktop sessions a finding reports (with the host's role) and thinner, flows no finding cites, by app; ticks: findings coloured by severity. Hover for details." }));
  }

  function heatmap(a) {
    var h = a.heat, C = 24, R = 7, CW = 24, CH = 20, L = 40, TOP = 18;
    var W = L + C * CW + 10, H = TOP + R * CH + 8;
    var max = 0;
    h.grid.forEach(function (row) { row.forEach(function (v) { if (v > max) max = v; }); });
    var svgEl = s("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "heatmap", role: "img" });
    svgEl.appendChild(s("title", {}, "Activity by hour and weekday, " + h.zone));
    var days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    for (var c = 0; c < C; c += 3) svgEl.appendChild(s("text", { x: L + c * CW + 2, y: 12 }, String(c).padStart(2, "0")));
    h.grid.forEach(function (row, d) {
      svgEl.appendChild(s("text", { x: 0, y: TOP + d * CH + 14 }, days[d]));
      row.forEach(function (v, hr) {
        var f = max ? v / max : 0;
        var fill = v ? "rgba(29,95,179," + (0.12 + 0.88 * f).toFixed(3) + ")" : "#f4f6f8";
        svgEl.appendChild(tip(s("rect", { x: L + hr * CW, y: TOP + d * CH, width: CW - 1, height: CH - 1, fill: fill, class: "cell" }),
          days[d] + " " + String(hr).padStart(2, "0") + ":00 " + h.zone + ": " + v + " flows"));
      });
    });
    var legend = [];
    if (h.foreign) {
      h.foreign.mark.forEach(function (row, d) {
        row.forEach(function (m, hr) {
          if (m) svgEl.appendChild(s("rect", { x: L + hr * CW + 1, y: TOP + d * CH + 1, width: CW - 3, height: CH - 3, fill: "none", stroke: "#e8590c", "stroke-width": 1.6, class: "foreign" }));
        });
      });
      legend.push("Outlined: working hours (Mon–Fri 09–18) in " + h.foreign.zone + ", which fits " + pct(h.foreign.fit) +
        " of the activity (" + h.foreign.source + ").");
    }
    legend.unshift("Flows started per hour in " + h.zone + ", " + h.total + " in all; " + pct(h.declared_fit) +
      " fall in its working hours (Mon–Fri 09–18).");
    return el("div", { class: "chart" }, el("h4", { text: "Activity by hour × weekday" }), svgEl,
      legend.map(function (t) { return el("p", { class: "note", text: t }); }));
  }

  function addresses(a) {
    var ips = [];
    a.sessions.forEach(function (v) { if (ips.indexOf(v.public_ip) < 0) ips.push(v.public_ip); });
    var box = el("div", { class: "chart" }, el("h4", { text: "Public addresses and countries over time" }));
    if (!ips.length) {
      box.appendChild(el("p", { class: "note", text: "No session feed or RADIUS accounting named a public address for this account." }));
      return box;
    }
    var W = 1100, L = 300, LH = 20, H = ips.length * LH + 24;
    var scale = timeScale(L, W - 10);
    var svgEl = s("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "addresses", role: "img" });
    var g = s("g", {});
    svgEl.appendChild(g);
    timeAxis(g, L, W - 10, ips.length * LH + 4, scale);
    ips.forEach(function (ip, i) {
      var first = a.sessions.filter(function (v) { return v.public_ip === ip; });
      var v0 = first[0];
      g.appendChild(s("text", { x: 0, y: i * LH + 14 }, ip + " " + (v0.country || "??") + (v0.asn ? " AS" + v0.asn : "") + (v0.as_org ? " " + v0.as_org.slice(0, 22) : "")));
      first.forEach(function (v) {
        g.appendChild(tip(s("circle", { cx: scale(ms(v.ts)), cy: i * LH + 10, r: 4.5, fill: color(ip), class: "obs" }),
          fmtTs(v.ts) + " " + ip + " " + (v.country || "") + " (" + v.source + ")"));
      });
    });
    box.appendChild(svgEl);
    box.appendChild(table([
      { key: "ts", label: "time (UTC)", render: function (v) { return fmtTs(v.ts); } },
      { key: "public_ip", label: "public address", cls: "mono" },
      { key: "country", label: "country" },
      { key: "asn", label: "ASN", render: function (v) { return v.asn ? "AS" + v.asn + (v.as_org ? " " + v.as_org : "") : "-"; } },
      { key: "assigned_ip", label: "VPN address", cls: "mono" },
      { key: "source", label: "source" }
    ], a.sessions, { what: "sessions" }));
    return box;
  }

  // Each session's operator round trip over time, against the declared country's ceiling.
  function latencyChart(a) {
    var pts = a.latency, ceil = a.ceiling;
    var box = el("div", { class: "chart" }, el("h4", { text: "Operator round trip against the domestic ceiling" }));
    if (!pts.length) {
      box.appendChild(el("p", { class: "note", text: "No operator round trip among this account's kept flow records (inbound VNC, RDP or SSH sessions to its host)." }));
      return box;
    }
    var W = 520, H = 260, L = 50, B = 36, R = 10, TOP = 10;
    var first = pts[0], last = pts[0], maxR = ceil ? ceil.ms : 10;
    pts.forEach(function (p) {
      if (ms(p.ts) < ms(first.ts)) first = p;
      if (ms(p.ts) > ms(last.ts)) last = p;
      maxR = Math.max(maxR, p.floor_ms);
    });
    maxR *= 1.15;
    var t0 = ms(first.ts), t1 = ms(last.ts), span = Math.max(t1 - t0, 1);
    var xs = function (ts) { return L + (W - L - R) * (t1 === t0 ? 0.5 : (ms(ts) - t0) / span); };
    var ys = function (r) { return H - B - (H - B - TOP) * r / maxR; };
    var svgEl = s("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "latency", role: "img" });
    svgEl.appendChild(s("title", {}, "Operator round trip of " + a.id));
    svgEl.appendChild(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    svgEl.appendChild(s("line", { class: "axis", x1: L, x2: L, y1: TOP, y2: H - B }));
    for (var i = 0; i <= 4; i++) {
      svgEl.appendChild(s("text", { x: L - 4, y: ys(maxR * i / 4) + 4, "text-anchor": "end" }, (maxR * i / 4).toFixed(0)));
    }
    svgEl.appendChild(s("text", { x: L, y: H - B + 14, "text-anchor": "start" }, fmtTs(first.ts)));
    if (t1 > t0) svgEl.appendChild(s("text", { x: W - R, y: H - B + 14, "text-anchor": "end" }, fmtTs(last.ts)));
    svgEl.appendChild(s("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle" }, "session start (UTC)"));
    svgEl.appendChild(s("text", { x: 12, y: TOP + 100, transform: "rotate(-90 12 " + (TOP + 100) + ")", "text-anchor": "middle" }, "round trip (ms)"));
    if (ceil) {
      svgEl.appendChild(tip(s("line", { x1: L, y1: ys(ceil.ms), x2: W - R, y2: ys(ceil.ms), stroke: "#c92a2a", "stroke-dasharray": "5 3", class: "ceiling" }),
        "domestic ceiling " + ceil.ms.toFixed(1) + " ms (" + ceil.country + ", " + ceil.source + ")"));
    }
    pts.forEach(function (p) {
      var far = ceil && p.floor_ms > ceil.ms;
      svgEl.appendChild(tip(s("circle", { cx: xs(p.ts), cy: ys(p.floor_ms), r: 5, fill: far ? "#c92a2a" : "#1d5fb3", class: "latpt" }),
        (p.app || "?") + " from " + p.peer + ": " + p.floor_ms.toFixed(1) + " ms, at least " + Math.round(p.floor_ms * 100) + " km away"));
    });
    box.appendChild(svgEl);
    box.appendChild(el("p", { class: "note", text: ceil
      ? "Dashed: the domestic ceiling of " + ceil.country + " (" + ceil.ms.toFixed(1) + " ms, " + ceil.source + "), as the latest operator_latency finding named it. A point above it: the person at the session is farther away than the declared country allows (a floor of f ms is at least f·100 km, light in fibre)."
      : "No operator_latency finding for this account, so every session's round trip stayed within its ceiling (or the account declares no country)." }));
    return box;
  }

  function rttChart(a) {
    var pts = a.rtt;
    var box = el("div", { class: "chart" }, el("h4", { text: "RTT against the speed-of-light bound" }));
    if (!pts.length) {
      box.appendChild(el("p", { class: "note", text: "No RTT to a located public address of this account (needs the sensor position or country in [sensor], a session feed or RADIUS, and TCP handshakes with that address)." }));
      return box;
    }
    var W = 520, H = 300, L = 50, B = 36, R = 10, TOP = 10;
    var maxD = 100, maxR = 10;
    pts.forEach(function (p) { maxD = Math.max(maxD, p.distance_km); maxR = Math.max(maxR, p.rtt_ms, p.bound_ms); });
    maxD *= 1.1; maxR *= 1.15;
    var xs = function (d) { return L + (W - L - R) * d / maxD; };
    var ys = function (r) { return H - B - (H - B - TOP) * r / maxR; };
    var svgEl = s("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, class: "rtt", role: "img" });
    svgEl.appendChild(s("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    svgEl.appendChild(s("line", { class: "axis", x1: L, x2: L, y1: TOP, y2: H - B }));
    for (var i = 0; i <= 4; i++) {
      svgEl.appendChild(s("text", { x: xs(maxD * i / 4), y: H - B + 14, "text-anchor": i === 4 ? "end" : "middle" }, Math.round(maxD * i / 4) + ""));
      svgEl.appendChild(s("text", { x: L - 4, y: ys(maxR * i / 4) + 4, "text-anchor": "end" }, (maxR * i / 4).toFixed(0)));
    }
    svgEl.appendChild(s("text", { x: (L + W) / 2, y: H - 4, "text-anchor": "middle" }, "distance from the sensor (km)"));
    svgEl.appendChild(s("text", { x: 12, y: TOP + 110, transform: "rotate(-90 12 " + (TOP + 110) + ")", "text-anchor": "middle" }, "least RTT (ms)"));
    // Round trip in fibre: d / 100 ms (200 km per ms each way).
    svgEl.appendChild(tip(s("line", { x1: xs(0), y1: ys(0), x2: xs(maxD), y2: ys(maxD / 100), stroke: "#c92a2a", "stroke-dasharray": "5 3", class: "bound" }), "speed-of-light bound in fibre"));
    pts.forEach(function (p) {
      var below = p.rtt_ms < p.bound_ms;
      svgEl.appendChild(tip(s("circle", { cx: xs(p.distance_km), cy: ys(p.rtt_ms), r: 5, fill: below ? "#c92a2a" : "#1d5fb3", class: "rttpt" }),
        (p.ip || "?") + " " + (p.country || "") + ": " + p.rtt_ms + " ms at " + p.distance_km + " km (bound " + p.bound_ms + " ms; " + p.source + ")"));
    });
    box.appendChild(svgEl);
    box.appendChild(el("p", { class: "note", text: "Dashed: the least possible round trip for the distance (light in fibre, 200 km/ms). A point below it means the address is nearer than the databases say; far above it suggests a relay." }));
    return box;
  }

  function floorText(r) { return r.latency_floor_ms == null ? "-" : r.latency_floor_ms.toFixed(1) + " ms"; }
  function rdTable(list) {
    return table([
      { key: "ts", label: "start (UTC)", render: function (r) { return fmtTs(r.ts); } },
      { key: "duration_s", label: "active for", cls: "num", render: function (r) { return fmtDur(r.duration_s); } },
      { key: "app", label: "app" },
      { key: "account", label: "account" },
      { key: "host", label: "host", cls: "mono" },
      { key: "role", label: "host is" },
      { key: "peer", label: "peer", cls: "mono" },
      { key: "via", label: "via" },
      { key: "severity", label: "severity", render: function (r) { return sev(r.severity); }, sort: function (r) { return SEVERITY_RANK[r.severity]; } },
      { key: "latency_floor_ms", label: "operator RTT", cls: "num", render: floorText },
      { key: "bytes_from_host", label: "bytes from host", cls: "num", render: function (r) { return fmtBytes(r.bytes_from_host); } },
      { key: "bytes_to_host", label: "bytes to host", cls: "num", render: function (r) { return fmtBytes(r.bytes_to_host); } },
      { key: "finding", label: "finding", render: function (r) { return link("#e-" + r.finding, D.events[r.finding].id); } },
      { key: "flow", label: "record", render: function (r) { return r.flow == null ? "-" : link("#f-" + r.flow, "flow " + r.flow); } }
    ], list, { what: "sessions", empty: "No remote-desktop session was reported." });
  }
  function rdFlowTable(list) {
    return table([
      { key: "ts", label: "start (UTC)", render: function (r) { return fmtTs(r.ts); } },
      { key: "duration_s", label: "duration", cls: "num", render: function (r) { return fmtDur(r.duration_s); } },
      { key: "app", label: "app" },
      { key: "account", label: "account" },
      { key: "src", label: "src", cls: "mono" },
      { key: "dst", label: "dst", cls: "mono" },
      { key: "latency_floor_ms", label: "operator RTT", cls: "num", render: floorText },
      { key: "bytes_orig", label: "bytes src→dst", cls: "num", render: function (r) { return fmtBytes(r.bytes_orig); } },
      { key: "bytes_resp", label: "bytes dst→src", cls: "num", render: function (r) { return fmtBytes(r.bytes_resp); } },
      { key: "flow", label: "record", render: function (r) { return link("#f-" + r.flow, "flow " + r.flow); } }
    ], list, { what: "flows", empty: "No other remote-desktop flow among the kept records." });
  }

  function eventColumns(withAccount) {
    var cols = [
      { key: "ts", label: "time (UTC)", render: function (e) { return fmtTs(e.ts); } },
      { key: "severity", label: "severity", render: function (e) { return sev(e.severity); }, sort: function (e) { return SEVERITY_RANK[e.severity]; } },
      { key: "kind", label: "finding", render: function (e) { return e.kind + "/" + e.reason; } }
    ];
    if (withAccount) cols.push({ key: "account", label: "account" });
    return cols.concat([
      { key: "host", label: "host", cls: "mono" },
      { key: "flow", label: "flow", cls: "mono" },
      { key: "app", label: "app" },
      { key: "summary", label: "summary", cls: "wrap" },
      { key: "flows", label: "cited records", render: function (e) { return flowLinks(e.flows); }, sort: function (e) { return e.flows.length; } },
      { key: "id", label: "id", cls: "mono" }
    ]);
  }

  // ---- page ----
  var toc = document.getElementById("toc");
  var m = D.meta, h = D.health;
  var dur = (ms(m.last_ts) - ms(m.first_ts)) / 1000;

  var head = section("header", "Header");
  head.appendChild(kv([
    ["farmwatch version", m.version],
    ["time span (UTC)", m.first_ts ? fmtTs(m.first_ts) + " .. " + fmtTs(m.last_ts) + " (" + fmtDur(dur) + ")" : "no packets"],
    ["packets", m.packets + " (" + fmtBytes(m.bytes) + ")"],
    ["flows", String(m.flows_total)],
    ["findings", String(D.events.length)],
    ["account inventory", m.accounts_file || "none given"],
    ["geo databases", m.databases.length ? m.databases.join("; ") : "-"]
  ]));
  head.appendChild(el("h4", { text: "Input files" }));
  head.appendChild(table([
    { key: "path", label: "file", cls: "wrap" },
    { key: "size", label: "size", cls: "num", render: function (f) { return f.size + " B (" + fmtBytes(f.size) + ")"; } },
    { key: "sha256", label: "SHA-256", cls: "mono" }
  ], m.files, { what: "files" }));
  head.appendChild(el("h4", { text: "Sensor configuration" }));
  head.appendChild(kv(m.sensor));
  var lim = m.limits;
  head.appendChild(el("p", { class: "note", text: "Kept for this report: " + lim.flows_kept + " of " + lim.flows_seen +
    " flow records (every record a finding cites, up to " + lim.notable_flows_kept_max + " remote-desktop and tunnel records, and the first " +
    lim.uncited_flows_kept_max + " others; " + lim.flows_not_kept + " not kept — they are in the --flows output). " +
    (lim.events_not_kept ? lim.events_not_kept + " findings were not kept (too many). " : "") +
    (lim.observations_not_kept ? lim.observations_not_kept + " public-address observations were not kept. " : "") +
    (lim.tallies_not_kept ? lim.tallies_not_kept + " findings are in no account's tally (too many accounts and kinds). " : "") +
    (lim.activity_not_kept ? lim.activity_not_kept + " flows are in no account's hourly activity (too many account-hours). " : "") +
    (lim.rtt_not_kept ? lim.rtt_not_kept + " handshake RTTs of addresses beyond those followed were not kept. " : "") +
    "Charts are drawn for the " + lim.charted_accounts + " highest-ranked accounts." }));

  var top = section("top", "Top findings", "Grouped by account and finding, most severe first.");
  top.appendChild(table([
    { key: "account", label: "account" },
    { key: "kind", label: "finding", render: function (t) { return t.kind + "/" + t.reason; } },
    { key: "severity", label: "severity", render: function (t) { return sev(t.severity); }, sort: function (t) { return SEVERITY_RANK[t.severity]; } },
    { key: "count", label: "count", cls: "num" },
    { key: "first", label: "first seen (UTC)", render: function (t) { return fmtTs(t.first); } },
    { key: "last", label: "last seen (UTC)", render: function (t) { return fmtTs(t.last); } }
  ], D.top, { what: "findings", empty: "No findings." }));

  var acc = section("accounts", "Accounts by risk", "Risk is the alert scorer's score where it gave one, else the findings' severities summed (critical 10, high 6, medium 3, low 1).");
  var accIndex = {};
  D.accounts.forEach(function (a, i) { accIndex[a.id] = i; });
  acc.appendChild(table([
    { key: "rank", label: "#", cls: "num", render: function (a, i) { return i + 1; }, sort: function (a) { return accIndex[a.id]; } },
    { key: "id", label: "account", render: function (a, i) { return a.charted ? link("#acct-" + i, a.id) : a.id; } },
    { key: "name", label: "name" },
    { key: "kind", label: "kind", render: function (a) { return a.kind || (a.in_inventory ? "-" : "not in inventory"); } },
    { key: "declared_country", label: "declared", render: function (a) { return (a.declared_country || "-") + " / " + (a.declared_timezone || "-"); } },
    { key: "risk", label: "risk", cls: "num", render: function (a) { return a.risk + (a.risk_source === "scorer" ? " (scorer)" : ""); } },
    { key: "events_total", label: "findings", cls: "num" },
    { key: "reasons", label: "reasons", render: function (a) { return a.reasons.map(function (r) { return el("span", { class: "pill", text: r.reason + " ×" + r.count }); }); }, sort: function (a) { return a.reasons.length; } },
    { key: "flows", label: "flows", cls: "num" }
  ], D.accounts, { what: "accounts", empty: "No accounts: give --accounts, --sessions or capture RADIUS accounting to tie traffic to people." }));

  D.accounts.forEach(function (a, i) {
    if (!a.charted) return;
    var box = el("div", { class: "account", id: "acct-" + i });
    box.appendChild(el("h3", { text: (i + 1) + ". " + a.id + (a.name ? " — " + a.name : "") }));
    box.appendChild(el("p", { class: "note", text: "risk " + a.risk + " (" + a.risk_source + ") · " + (a.kind || "not in the inventory") +
      " · declared " + (a.declared_country || "-") + ", " + (a.declared_timezone || "no time zone") + " · " + a.flows + " flows · " + a.events_total + " findings" }));
    if (a.reasons.length) {
      box.appendChild(el("h4", { text: "Reasons" }));
      box.appendChild(table([
        { key: "kind", label: "finding", render: function (t) { return t.kind + "/" + t.reason; } },
        { key: "severity", label: "severity", render: function (t) { return sev(t.severity); }, sort: function (t) { return SEVERITY_RANK[t.severity]; } },
        { key: "count", label: "count", cls: "num" },
        { key: "first", label: "first (UTC)", render: function (t) { return fmtTs(t.first); } },
        { key: "last", label: "last (UTC)", render: function (t) { return fmtTs(t.last); } }
      ], a.reasons, { what: "reasons" }));
      box.appendChild(el("h4", { text: "Findings" + (a.events_total > a.events.length ? " (first " + a.events.length + " of " + a.events_total + ")" : "") }));
      box.appendChild(table([
        { key: "ts", label: "time (UTC)", render: function (i) { return fmtTs(D.events[i].ts); }, sort: function (i) { return D.events[i].ts; } },
        { key: "sev", label: "severity", render: function (i) { return sev(D.events[i].severity); }, sort: function (i) { return SEVERITY_RANK[D.events[i].severity]; } },
        { key: "what", label: "finding", render: function (i) { return D.events[i].kind + "/" + D.events[i].reason; }, sort: function (i) { return D.events[i].reason; } },
        { key: "summary", label: "summary", cls: "wrap", render: function (i) { return D.events[i].summary; }, sort: function (i) { return D.events[i].summary; } },
        { key: "flows", label: "cited records", render: function (i) { return flowLinks(D.events[i].flows); }, sort: function (i) { return D.events[i].flows.length; } },
        { key: "id", label: "id", cls: "mono", render: function (i) { return link("#e-" + i, D.events[i].id); }, sort: function (i) { return D.events[i].id; } }
      ], a.events, { what: "findings" }));
    }
    var charts = el("div", { class: "charts" });
    charts.appendChild(timeline(a));
    if (a.heat) charts.appendChild(heatmap(a));
    charts.appendChild(rttChart(a));
    if (a.latency.length || a.ceiling) charts.appendChild(latencyChart(a));
    box.appendChild(charts);
    box.appendChild(addresses(a));
    if (a.rd.length) {
      box.appendChild(el("h4", { text: "Remote-desktop sessions" }));
      box.appendChild(rdTable(a.rd.map(function (k) { return D.rd_sessions[k]; })));
    }
    if (a.rd_flows.length) {
      box.appendChild(el("h4", { text: "Remote-desktop flows without a finding" }));
      box.appendChild(rdFlowTable(a.rd_flows.map(function (k) { return D.rd_flows[k]; })));
    }
    acc.appendChild(box);
  });

  var fin = section("findings", "All findings", "Every finding of the replay; the cited records link to the flow records below.");
  fin.appendChild(table(eventColumns(true).concat([
    { key: "evidence", label: "evidence", cls: "ev", render: function (e) { var t = JSON.stringify(e.evidence); return t.length > 400 ? t.slice(0, 400) + "…" : t; }, sort: function () { return 0; } }
  ]), D.events, { what: "findings", rowId: function (e, i) { return "e-" + i; }, empty: "No findings." }));

  var rdSec = section("rd", "Remote-desktop sessions", "Sessions as the persistent_stream detector reported them, from each session's latest finding: the host is controlled when it sent the screen (far more bytes, large packets) and received input (small packets), controller for the reverse, else undetermined.");
  rdSec.appendChild(rdTable(D.rd_sessions));
  rdSec.appendChild(el("h4", { text: "Remote-desktop flows without a finding" }));
  rdSec.appendChild(el("p", { class: "note", text: "Kept records of remote-desktop tools that no session finding cites: shorter than the reported span, or further flows of a reported session. No detector judged who controls whom in them." }));
  rdSec.appendChild(rdFlowTable(D.rd_flows));
  rdSec.appendChild(el("h4", { text: "Operator latency" }));
  rdSec.appendChild(el("p", { class: "note", text: "operator_latency findings: the round trip to the person at the session (the floor of output-to-next-input) above the declared country's domestic ceiling." }));
  rdSec.appendChild(table([
    { key: "ts", label: "time (UTC)", render: function (r) { return fmtTs(r.ts); } },
    { key: "account", label: "account" },
    { key: "severity", label: "severity", render: function (r) { return sev(r.severity); }, sort: function (r) { return SEVERITY_RANK[r.severity]; } },
    { key: "host", label: "host", cls: "mono" },
    { key: "app", label: "app" },
    { key: "viewer", label: "viewer", cls: "mono", render: function (r) { return r.viewer + (r.relay ? " (relay)" : ""); } },
    { key: "floor_ms", label: "operator RTT", cls: "num", render: function (r) { return r.floor_ms.toFixed(1) + " ms"; } },
    { key: "domestic_ceiling_ms", label: "ceiling", cls: "num", render: function (r) { return r.domestic_ceiling_ms.toFixed(1) + " ms (" + r.declared_country + ", " + r.ceiling_source + ")"; } },
    { key: "min_distance_km", label: "at least", cls: "num", render: function (r) { return r.min_distance_km + " km"; } },
    { key: "exchanges", label: "exchanges", cls: "num" },
    { key: "finding", label: "finding", render: function (r) { return link("#e-" + r.finding, D.events[r.finding].id); } }
  ], D.operators, { what: "findings", empty: "No operator was found farther than the declared country allows." }));

  var rc = section("relays", "Relay chains", "Hosts that relay an interactive session (stepping_stone findings): activity arriving from the source is followed by activity toward the target.");
  rc.appendChild(table([
    { key: "ts", label: "time (UTC)", render: function (r) { return fmtTs(r.ts); } },
    { key: "account", label: "account" },
    { key: "severity", label: "severity", render: function (r) { return sev(r.severity); }, sort: function (r) { return SEVERITY_RANK[r.severity]; } },
    { key: "source", label: "source", cls: "mono" },
    { key: "host", label: "relaying host", cls: "mono" },
    { key: "target", label: "target", cls: "mono" },
    { key: "inbound", label: "inbound leg", cls: "mono" },
    { key: "outbound", label: "outbound leg", cls: "mono" },
    { key: "delta_ms", label: "within", cls: "num", render: function (r) { return r.delta_ms + " ms"; } },
    { key: "hits", label: "coinciding", cls: "num" },
    { key: "finding", label: "finding", render: function (r) { return link("#e-" + r.finding, D.events[r.finding].id); } },
    { key: "flows", label: "records", render: function (r) { return flowLinks(r.flows); }, sort: function (r) { return r.flows.length; } }
  ], D.relay_chains, { what: "relay chains", empty: "No stepping stone was found." }));
  rc.appendChild(el("h4", { text: "Relays behind a TCP round trip" }));
  rc.appendChild(el("p", { class: "note", text: "rtt_split findings: on the relay's side the application answered far later than TCP did, so TCP ends at a relay there. Each leg as the sensor timed it." }));
  rc.appendChild(table([
    { key: "ts", label: "time (UTC)", render: function (r) { return fmtTs(r.ts); } },
    { key: "account", label: "account" },
    { key: "severity", label: "severity", render: function (r) { return sev(r.severity); }, sort: function (r) { return SEVERITY_RANK[r.severity]; } },
    { key: "host", label: "host", cls: "mono" },
    { key: "relay", label: "relay", cls: "mono" },
    { key: "relay_side", label: "relay side" },
    { key: "responder_leg", label: "responder leg" },
    { key: "originator_leg", label: "originator leg" },
    { key: "extra_ms", label: "extra", cls: "num", render: function (r) { return r.extra_ms + " ms"; } },
    { key: "connections", label: "connections", cls: "num", render: function (r) { return r.connections + " (" + r.evidence + ")"; } },
    { key: "finding", label: "finding", render: function (r) { return link("#e-" + r.finding, D.events[r.finding].id); } },
    { key: "flows", label: "records", render: function (r) { return flowLinks(r.flows); }, sort: function (r) { return r.flows.length; } }
  ], D.rtt_splits, { what: "relays", empty: "No RTT split was found." }));

  var cl = section("clusters", "Farm clusters", "Public addresses that more than one account connected from (session feed and RADIUS), with the days (UTC) each did.");
  cl.appendChild(table([
    { key: "public_ip", label: "public address", cls: "mono" },
    { key: "country", label: "country" },
    { key: "asn", label: "ASN", render: function (c) { return c.asn ? "AS" + c.asn : "-"; } },
    { key: "accounts", label: "accounts", render: function (c) { return c.accounts.map(function (x) { return el("span", { class: "pill", text: x.id + ": " + x.days.join(", ") }); }); }, sort: function (c) { return c.accounts.length; } },
    { key: "days", label: "days", render: function (c) { return c.days.length + " (" + c.days[0] + " .. " + c.days[c.days.length - 1] + ")"; }, sort: function (c) { return c.days.length; } }
  ], D.clusters, { what: "clusters", empty: "No public address was shared by two accounts." }));
  var farm = [];
  D.events.forEach(function (e, i) { if (e.kind === "farm_cluster") farm.push(i); });
  if (farm.length) {
    cl.appendChild(el("h4", { text: "Farm-cluster findings" }));
    cl.appendChild(table([
      { key: "ts", label: "time (UTC)", render: function (i) { return fmtTs(D.events[i].ts); }, sort: function (i) { return D.events[i].ts; } },
      { key: "account", label: "account", render: function (i) { return D.events[i].account; }, sort: function (i) { return D.events[i].account; } },
      { key: "summary", label: "summary", cls: "wrap", render: function (i) { return D.events[i].summary; }, sort: function (i) { return D.events[i].summary; } },
      { key: "evidence", label: "evidence", cls: "ev", render: function (i) { return JSON.stringify(D.events[i].evidence); }, sort: function () { return 0; } },
      { key: "id", label: "id", cls: "mono", render: function (i) { return link("#e-" + i, D.events[i].id); }, sort: function (i) { return D.events[i].id; } }
    ], farm, { what: "findings" }));
  }

  var fl = section("flows", "Flow records", "The records kept for this report (see the header). Click a row for the whole record.");
  var detail = el("pre", { id: "flow-detail", text: "Select a flow record." });
  function showFlow(i) { var f = D.flows[i]; if (f) detail.textContent = "flow " + i + "\n" + JSON.stringify(f, null, 2); }
  var flowsBox = table([
    { key: "i", label: "#", cls: "num", render: function (f, i) { return i; }, sort: function () { return 0; } },
    { key: "ts", label: "start (UTC)", render: function (f) { return fmtTs(f.ts); } },
    { key: "duration_s", label: "duration", cls: "num", render: function (f) { return fmtDur(f.duration_s); } },
    { key: "flow", label: "flow", cls: "mono", render: flowText, sort: flowText },
    { key: "app", label: "app", render: function (f) { return f.app || (f.guess ? "(" + f.guess + "?)" : "-"); } },
    { key: "name", label: "SNI · DNS name · RDP cookie", cls: "wrap", render: flowNames, sort: flowNames },
    { key: "account", label: "account" },
    { key: "resp_country", label: "dst country" },
    { key: "bytes_orig", label: "bytes src→dst", cls: "num", render: function (f) { return fmtBytes(f.bytes_orig); } },
    { key: "bytes_resp", label: "bytes dst→src", cls: "num", render: function (f) { return fmtBytes(f.bytes_resp); } },
    { key: "tcp_rtt_ms", label: "RTT ms", cls: "num" },
    { key: "community_id", label: "community id", cls: "mono" }
  ], D.flows, { what: "flow records", rowId: function (f, i) { return "f-" + i; }, onClick: function (f, i) { showFlow(i); } });
  fl.appendChild(flowsBox);
  fl.appendChild(el("div", { id: "flow-detail-box" }, detail));

  var he = section("health", "Capture health", "What the sensor could not see: an analyst weighs the findings against these.");
  var rows = [
    ["records cut short (snaplen or file end)", String(h.truncated_records)],
    ["capture drops (kernel / interface)", h.capture_drops_kernel + " / " + h.capture_drops_interface],
    ["geo lookups evicted from the cache", String(h.geo_cache_evictions)],
    ["account mappings dropped (too many per address)", String(h.identity_ranges_evicted)],
    ["session stops that matched no session", String(h.identity_unmatched_stops)]
  ];
  function listCounts(o) { var k = Object.keys(o); return k.length ? k.map(function (x) { return x + " " + o[x]; }).join(", ") : "none"; }
  rows.push(["decode problems", listCounts(h.decode_errors)]);
  rows.push(["flows evicted before their end", listCounts(h.flows_evicted)]);
  rows.push(["output write failures", listCounts(h.sink_errors)]);
  rows.push(["flows by application", listCounts(h.flows_by_app)]);
  m.files.forEach(function (f) {
    if (f.truncated || f.skipped) rows.push([f.path, f.truncated + " record(s) cut off at the end, " + f.skipped + " skipped"]);
  });
  he.appendChild(kv(rows));

  // A link to a record in a filtered table still lands on it.
  function reveal() {
    var id = location.hash.slice(1);
    if (!/^[ef]-\d+$/.test(id)) return;
    var row = document.getElementById(id);
    if (row && row.hidden) {
      var box = row.closest(".tablebox");
      if (box && box.clearFilter) box.clearFilter();
      row.scrollIntoView();
    }
    if (id.charAt(0) === "f") showFlow(Number(id.slice(2)));
  }
  window.addEventListener("hashchange", reveal);
  reveal();

  var status = el("p", { id: "fw-status", class: "note", text: "Rendered " + D.accounts.length + " accounts, " + D.events.length + " findings, " + D.flows.length + " flow records in " + Math.round(performance.now() - started) + " ms." });
  root.appendChild(status);
  if (document.body.getAttribute("data-rendered") !== "error") document.body.setAttribute("data-rendered", "ok");
})();
