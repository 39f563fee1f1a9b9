// Panshi pages: the live parts. Plain JavaScript, no build step, no other origin.
// - order page: follows the order over its WebSocket, shows keys as they arrive, reconnects,
//   counts down the time left to pay;
// - every page: times in `<time data-local>` shown in the reader's local time;
// - queue page: follows a waiting-room ticket, then goes to the order (or reloads to show
//   the outcome);
// - catalogue: refreshes the stock counts;
// - copy buttons.
"use strict";

(function () {
  var RECONNECT_DELAY_MS_MIN = 1000;
  var RECONNECT_DELAY_MS_MAX = 15000;
  // Failed connections in a row after which the queue page asks the server whether its
  // ticket still exists (a restart forgets waiting rooms).
  var QUEUE_FAILURES_PROBE = 3;
  var STOCK_REFRESH_MS = 15000;
  var TERMINAL = { delivered: 1, expired: 1, refunded: 1, cancelled: 1 };
  var STEP_REACHED = { awaiting_payment: 0, paid: 1, manual_review: 1, delivered: 2 };

  function copyText(text, done) {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallbackCopy(text, done); });
    } else {
      fallbackCopy(text, done);
    }
  }

  function fallbackCopy(text, done) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); done(); } catch (e) { /* the key stays selectable */ }
    document.body.removeChild(area);
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-copy-text]") : null;
    if (!button) return;
    var order = document.getElementById("order");
    var copied = order ? order.getAttribute("data-copied") : "Copied";
    var label = button.textContent;
    copyText(button.getAttribute("data-copy-text"), function () {
      button.textContent = copied;
      setTimeout(function () { button.textContent = label; }, 2000);
    });
  });

  function keyItem(order, key) {
    var li = document.createElement("li");
    var code = document.createElement("code");
    code.className = "key";
    code.textContent = key;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "copy";
    button.setAttribute("data-copy-text", key);
    button.textContent = order.getAttribute("data-copy");
    li.appendChild(code);
    li.appendChild(button);
    return li;
  }

  function showOrder(order, update) {
    var labels = JSON.parse(order.getAttribute("data-labels"));
    var status = update.status;
    order.setAttribute("data-status", status);
    document.getElementById("status").textContent = labels[status] || status;
    var reached = STEP_REACHED[status];
    var steps = document.querySelectorAll("#steps li");
    for (var i = 0; i < steps.length; i++) {
      steps[i].classList.toggle("done", reached !== undefined && i <= reached);
      if (reached === i) steps[i].setAttribute("aria-current", "step");
      else steps[i].removeAttribute("aria-current");
    }
    var pay = document.getElementById("pay");
    if (pay && status !== "awaiting_payment") pay.hidden = true;
    var left = document.getElementById("countdown");
    if (left && status !== "awaiting_payment") left.hidden = true;
    var cards = update.cards || [];
    var list = document.getElementById("keys");
    if (cards.length > 0 && list.children.length < cards.length) {
      list.textContent = "";
      cards.forEach(function (key) { list.appendChild(keyItem(order, key)); });
      var empty = document.getElementById("keys-empty");
      if (empty) empty.hidden = true;
      var usage = document.getElementById("usage-note");
      if (usage) usage.hidden = false;
    }
  }

  function followOrder(order) {
    var delay = RECONNECT_DELAY_MS_MIN;
    var conn = document.getElementById("conn");
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      "/api/v1/orders/" + encodeURIComponent(order.getAttribute("data-order")) +
      "/live?token=" + encodeURIComponent(order.getAttribute("data-token"));
    function connect() {
      var finished = false;
      var socket = new WebSocket(url);
      socket.onopen = function () { conn.hidden = true; delay = RECONNECT_DELAY_MS_MIN; };
      socket.onmessage = function (event) {
        var update;
        try { update = JSON.parse(event.data); } catch (e) { return; }
        showOrder(order, update);
        if (TERMINAL[update.status]) finished = true;
      };
      socket.onclose = function () {
        if (finished) return;
        // The first frame after a reconnect is the current state, so nothing is missed.
        conn.hidden = false;
        setTimeout(connect, delay);
        delay = Math.min(delay * 2, RECONNECT_DELAY_MS_MAX);
      };
    }
    if (!TERMINAL[order.getAttribute("data-status")]) connect();
  }

  function followQueue(queue) {
    var delay = RECONNECT_DELAY_MS_MIN;
    var failures = 0;
    var conn = document.getElementById("conn");
    var waitLabel = queue.getAttribute("data-wait-label");
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host +
      "/api/v1/queue/" + encodeURIComponent(queue.getAttribute("data-ticket")) +
      "/live?token=" + encodeURIComponent(queue.getAttribute("data-token"));
    function connect() {
      var finished = false;
      var socket = new WebSocket(url);
      socket.onopen = function () { conn.hidden = true; delay = RECONNECT_DELAY_MS_MIN; };
      socket.onmessage = function (event) {
        var update;
        try { update = JSON.parse(event.data); } catch (e) { return; }
        failures = 0;
        if (update.status === "queued") {
          document.getElementById("position").textContent = update.position;
          document.getElementById("wait").textContent =
            waitLabel.replace("{}", update.estimated_wait_secs);
          return;
        }
        finished = true;
        if (update.status === "admitted" && update.order) {
          location.assign("/order/" + encodeURIComponent(update.order.order_id) +
            "?token=" + encodeURIComponent(update.order.token));
        } else {
          // Sold out or failed: the page itself says so.
          location.reload();
        }
      };
      socket.onclose = function () {
        if (finished) return;
        conn.hidden = false;
        failures += 1;
        var retry = function () {
          setTimeout(connect, delay);
          delay = Math.min(delay * 2, RECONNECT_DELAY_MS_MAX);
        };
        if (failures < QUEUE_FAILURES_PROBE) { retry(); return; }
        // The server answers, but not for this ticket: let the page say what became of it
        // (gone after a restart, sold out, an order) instead of reconnecting forever.
        fetch(location.href, { credentials: "same-origin", redirect: "manual" })
          .then(function (r) { if (r.status === 200) retry(); else location.reload(); })
          .catch(retry);
      };
    }
    connect();
  }

  function refreshStock(list) {
    var soldOut = list.getAttribute("data-sold-out");
    var inStock = list.getAttribute("data-in-stock");
    fetch("/api/v1/products", { credentials: "omit" })
      .then(function (r) { return r.ok ? r.json() : []; })
      .then(function (products) {
        products.forEach(function (p) {
          var item = list.querySelector('li[data-sku="' + CSS.escape(p.sku) + '"] .stock');
          if (!item) return;
          item.setAttribute("data-stock", p.available);
          item.classList.toggle("out", p.available === 0);
          item.textContent = p.available === 0 ? soldOut : inStock + p.available;
        });
      })
      .catch(function () { /* the next refresh tries again */ });
  }

  // Times the server wrote in the shop's time zone, shown in the reader's own.
  function localTimes() {
    var times = document.querySelectorAll("time[data-local]");
    for (var i = 0; i < times.length; i++) {
      var at = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(at.getTime())) {
        times[i].textContent = at.toLocaleString(document.documentElement.lang, {
          year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
        });
        times[i].title = times[i].getAttribute("datetime");
      }
    }
  }

  // The time left to pay, by the second; the socket says when the order really expired.
  function countdown(box) {
    var expiresAt = Number(box.getAttribute("data-expires-at"));
    var left = document.getElementById("time-left");
    var order = document.getElementById("order");
    function tick() {
      if (order && order.getAttribute("data-status") !== "awaiting_payment") {
        box.hidden = true;
        return;
      }
      var secs = Math.max(0, Math.floor((expiresAt - Date.now()) / 1000));
      left.textContent = Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0");
      if (secs === 0) {
        box.textContent = box.getAttribute("data-expired");
        return;
      }
      setTimeout(tick, 1000);
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes();
    var box = document.getElementById("countdown");
    if (box) countdown(box);
    var order = document.getElementById("order");
    if (order) followOrder(order);
    var queue = document.getElementById("queue");
    if (queue) followQueue(queue);
    var catalogue = document.getElementById("catalogue");
    if (catalogue) setInterval(function () { refreshStock(catalogue); }, STOCK_REFRESH_MS);
  });
})();
