(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("forklens-data").textContent);
  var toks = data.tokens;
  var tip = document.getElementById("tip");
  var active = null;

  function fmtP(p) {
    if (p === null || p === undefined) return "\u2014";
    if (p >= 0.001) return (100 * p).toFixed(1) + "%";
    return (100 * p).toExponential(1) + "%";
  }
  function fmtN(x, d) { return (x === null || x === undefined) ? "\u2014" : x.toFixed(d); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function fill(d) {
    tip.textContent = "";
    var head = el("div", "head");
    head.appendChild(document.createTextNode("token "));
    head.appendChild(el("code", "cand", d.t));
    head.appendChild(el("span", "tid", " id " + d.tid));
    head.appendChild(document.createTextNode(" at position " + d.pos + " \u2014 "));
    head.appendChild(el("span", "cls " + d.c, d.c));
    tip.appendChild(head);
    var line = el("div");
    line.appendChild(document.createTextNode("RL token "));
    line.appendChild(el("code", "cand", d.r));
    line.appendChild(el("span", "tid", " id " + d.rid));
    line.appendChild(document.createTextNode(" \u00b7 rank under base " + d.k +
      " \u00b7 p_base " + fmtP(d.pb) + " \u00b7 p_RL " + fmtP(d.pr)));
    tip.appendChild(line);
    var table = el("table");
    var thead = el("thead");
    var hr = el("tr");
    ["#", "base top-5", "p", "RL top-5", "p"].forEach(function (h) {
      var th = el("th", null, h); th.scope = "col"; hr.appendChild(th);
    });
    thead.appendChild(hr);
    table.appendChild(thead);
    var tbody = el("tbody");
    var n = Math.max(d.b.length, d.l.length);
    for (var i = 0; i < n; i++) {
      var tr = el("tr");
      tr.appendChild(el("td", null, String(i + 1)));
      [d.b[i], d.l[i]].forEach(function (c) {
        var isRl = c && c[2] === d.rid;
        var cell = el("td", "cand" + (isRl ? " is-rl" : ""), c ? c[0] : "");
        if (c) cell.appendChild(el("span", "tid", " #" + c[2]));
        tr.appendChild(cell);
        tr.appendChild(el("td", "num prob" + (isRl ? " is-rl" : ""), c ? fmtP(c[1]) : ""));
      });
      tbody.appendChild(tr);
    }
    table.appendChild(tbody);
    tip.appendChild(table);
    tip.appendChild(el("div", "stats", "H_base " + fmtN(d.hb, 3) + " nats \u00b7 H_RL " + fmtN(d.hr, 3) +
      " nats \u00b7 KL(base\u2016RL) " + fmtN(d.kl, 4) + " nats"));
  }

  function place(target) {
    var r = target.getBoundingClientRect();
    tip.style.left = "0px"; tip.style.top = "0px";
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    var left = Math.min(Math.max(4, r.left), Math.max(4, vw - w - 4));
    var top = r.bottom + 6;
    if (top + h > vh && r.top - h - 6 > 0) top = r.top - h - 6;
    tip.style.left = (left + window.scrollX) + "px";
    tip.style.top = (top + window.scrollY) + "px";
  }

  function show(target) {
    var d = toks[+target.getAttribute("data-i")];
    if (!d) return;
    if (active && active !== target) active.removeAttribute("aria-describedby");
    active = target;
    fill(d);
    tip.hidden = false;
    target.setAttribute("aria-describedby", "tip");
    place(target);
  }
  function hide() {
    tip.hidden = true;
    if (active) active.removeAttribute("aria-describedby");
    active = null;
  }
  function isTok(t) { return t && t.classList && t.classList.contains("tok") && t.hasAttribute("data-i"); }

  document.addEventListener("focusin", function (e) { if (isTok(e.target)) show(e.target); });
  document.addEventListener("focusout", function (e) { if (e.target === active) hide(); });
  document.addEventListener("mouseover", function (e) { if (isTok(e.target)) show(e.target); });
  document.addEventListener("mouseout", function (e) {
    if (isTok(e.target) && e.target === active && document.activeElement !== e.target) hide();
  });

  var all = Array.prototype.slice.call(document.querySelectorAll(".tok[data-i]"));
  function visible(t) { return t.offsetParent !== null; }
  function move(from, step, pred) {
    var i = all.indexOf(from);
    for (var j = i + step; j >= 0 && j < all.length; j += step) {
      if (visible(all[j]) && (!pred || pred(all[j]))) { all[j].focus(); all[j].scrollIntoView({block: "nearest"}); return; }
    }
  }
  function isDis(t) { return !t.classList.contains("c-unshifted"); }
  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { hide(); return; }
    if (e.altKey || e.ctrlKey || e.metaKey) return;
    var t = document.activeElement;
    var onTok = isTok(t);
    if (onTok && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();  // the token is a toggle button for its tooltip
      if (tip.hidden || active !== t) show(t); else hide();
    }
    else if (onTok && e.key === "ArrowRight") { e.preventDefault(); move(t, 1); }
    else if (onTok && e.key === "ArrowLeft") { e.preventDefault(); move(t, -1); }
    else if (e.key === "n" || e.key === "p") {
      if (t && t.tagName === "INPUT") return;
      var step = e.key === "n" ? 1 : -1;
      if (onTok) { move(t, step, isDis); }
      else {
        var cands = all.filter(function (x) { return visible(x) && isDis(x); });
        if (cands.length) { var c = step > 0 ? cands[0] : cands[cands.length - 1]; c.focus(); c.scrollIntoView({block: "nearest"}); }
      }
    }
  });
  window.addEventListener("resize", function () { if (active) place(active); });

  var only = document.getElementById("only-dis");
  if (only) only.addEventListener("change", function () { document.body.classList.toggle("only-dis", only.checked); });
})();
