// tether_sync control panel: follows /events (server-sent events) and posts the buttons.
// Plain browser JavaScript, no build step, no dependencies.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_LOG = 250;
  const SPARK_SECONDS = 30;

  let clockOffset = 0; // server wall time minus local wall time, seconds
  let last = null; // the last snapshot
  const queueSamples = []; // [localSeconds, depth]

  function setText(id, value) {
    const el = $(id);
    const text = String(value);
    if (el && el.textContent !== text) el.textContent = text;
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    return s < 10 ? s.toFixed(2) + " s" : s.toFixed(1) + " s";
  }

  function fmtInt(n) {
    return Number(n).toLocaleString("en-US");
  }

  function fmtClock(t) {
    const d = new Date(t * 1000);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + "." + pad(d.getMilliseconds(), 3);
  }

  // ------------------------------------------------------------------ rendering

  function render(snap) {
    last = snap;
    clockOffset = snap.now - Date.now() / 1000;
    const st = snap.stats;
    const server = snap.server;
    if (st) {
      const badge = $("state");
      if (badge.dataset.state !== st.state) {
        badge.dataset.state = st.state;
        badge.textContent = st.state;
      }
      setText("attempt", st.attempt);
      setText("next-delay", st.next_delay === null ? "–" : fmtSeconds(st.next_delay));
      setText("reconnects", st.reconnects);
      setText("rtt", st.last_rtt === null ? "–" : (st.last_rtt * 1000).toFixed(1) + " ms");
      setText("queue-depth", st.queue_depth);
      setText("in-flight", st.in_flight);
      setText("queued", st.queued);
      setText("sent", st.sent);
      setText("dropped-outbound", st.dropped_outbound);
      setText("received", st.received);
      setText("dropped-inbound", st.dropped_inbound);
      $("dropped-inbound").classList.toggle("alert", st.dropped_inbound > 0);
      setText("auth-refreshes", st.auth_refreshes);
      setText("acked", fmtInt(st.acked));
      setText("unacked", fmtInt(st.unacked));
      setText("resent", fmtInt(st.resent));
      setText("extensions", st.extensions.length ? st.extensions.join(", ") : "none (plain Tether)");
      // The share of the queue's bound taken by messages awaiting their ack.
      const bound = snap.config.queue_size || 1;
      $("ack-bar").style.width = Math.min(100, (st.unacked / bound) * 100).toFixed(1) + "%";
      renderBuffered(st.buffered_amount, st.high_water_mark);
      queueSamples.push([Date.now() / 1000, st.queue_depth]);
      renderSpark();
    }
    setText("rotations", snap.rotations);
    setText("tokens-minted", snap.tokens_minted);
    setText("flood-consumed", snap.flood_consumed);
    const faults = Object.keys(server.faults);
    let serverText = "server: " + (server.running ? "online" : "OFFLINE") + " · " + server.connections + " connection(s)";
    if (server.latency > 0) serverText += " · latency " + Math.round(server.latency * 1000) + " ms";
    for (const name of faults) {
      serverText += " · " + name + " " + Math.max(0, server.faults[name] - snap.now).toFixed(0) + " s left";
    }
    setText("server-status", serverText);
    const cfg = snap.config;
    setText("heartbeat-config", cfg.heartbeat_interval + " s / " + cfg.heartbeat_timeout + " s");
    setText("backoff-config", "(base " + cfg.base_delay + " s, cap " + cfg.max_delay + " s)");
    setText("auth-config", "Tokens live " + cfg.token_ttl + " s; the client rotates them " + cfg.refresh_before + " s before expiry.");
    renderChannels(snap.channels, st ? st.inbound_depth : {});
    renderTimeline(snap.outages, cfg.max_delay);
    renderCrash(snap.crash);
    tick();
  }

  function renderCrash(crash) {
    if (!crash) return;
    const phases = { sending: "sending", killed: "server killed", recovering: "server back, resending", done: "done" };
    setText("crash-phase", "#" + crash.crash + " " + (phases[crash.phase] || crash.phase) + " · " + fmtInt(crash.sent) + " / " + fmtInt(crash.count));
    setText("crash-killed", crash.acked_at_kill === null ? "–" : fmtInt(crash.acked_at_kill) + " / " + fmtInt(crash.unacked_at_kill));
    const lost = $("crash-lost");
    setText("crash-lost", crash.lost === null ? "–" : "lost: " + fmtInt(crash.lost));
    lost.classList.toggle("alert", crash.lost !== null && crash.lost > 0);
    setText("crash-duplicates", crash.duplicates === null ? "–" : fmtInt(crash.duplicates) + " (" + fmtInt(crash.resent) + " resent)");
  }

  function renderBuffered(amount, hwm) {
    setText("buffered-amount", fmtInt(amount));
    setText("high-water-mark", fmtInt(hwm));
    const ratio = hwm > 0 ? Math.min(1, amount / hwm) : 0;
    const bar = $("buffered-bar");
    bar.style.width = (ratio * 100).toFixed(1) + "%";
    bar.classList.toggle("hot", amount >= hwm);
    const meter = $("buffered-meter");
    meter.setAttribute("aria-valuemax", String(hwm));
    meter.setAttribute("aria-valuenow", String(Math.min(amount, hwm)));
  }

  function renderSpark() {
    const now = Date.now() / 1000;
    while (queueSamples.length && queueSamples[0][0] < now - SPARK_SECONDS) queueSamples.shift();
    let peak = 0;
    for (const s of queueSamples) peak = Math.max(peak, s[1]);
    setText("queue-peak", peak);
    const scale = Math.max(peak, 1);
    const pts = queueSamples.map((s) => {
      const x = ((s[0] - (now - SPARK_SECONDS)) / SPARK_SECONDS) * 300;
      const y = 58 - (s[1] / scale) * 54;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    $("queue-spark").querySelector("polyline").setAttribute("points", pts.join(" "));
  }

  function renderChannels(channels, depth) {
    const body = $("channels");
    const names = new Set(Object.keys(channels));
    for (const name of Object.keys(depth || {})) names.add(name);
    if (!names.size) return;
    const rows = [];
    for (const name of Array.from(names).sort()) {
      const c = channels[name] || { received: 0, dropped: 0 };
      const tr = document.createElement("tr");
      tr.dataset.channel = name;
      const cells = [name, fmtInt(c.received), fmtInt(c.dropped), fmtInt((depth || {})[name] || 0)];
      cells.forEach((text, i) => {
        const td = document.createElement(i === 0 ? "th" : "td");
        if (i === 0) td.scope = "row";
        td.textContent = text;
        if (i === 2 && c.dropped > 0) td.className = "alert";
        tr.appendChild(td);
      });
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderTimeline(outages, cap) {
    const list = $("timeline");
    if (!outages.length) return;
    const items = [];
    for (const outage of outages.slice().reverse()) {
      const li = document.createElement("li");
      li.className = "outage";
      const head = document.createElement("div");
      head.className = "outage-head";
      const status = document.createElement("span");
      if (outage.ended === null) {
        status.className = "ongoing";
        status.textContent = "reconnecting…";
      } else {
        status.className = "done";
        status.textContent = "reopened after " + fmtSeconds(outage.ended - outage.started);
      }
      head.append(fmtClock(outage.started) + " lost (" + outage.cause + ") · " + outage.total_attempts + " attempt(s) · ", status);
      li.appendChild(head);
      const attempts = document.createElement("ol");
      attempts.className = "attempts";
      for (const a of outage.attempts) {
        const row = document.createElement("li");
        row.className = "attempt";
        const label = document.createElement("span");
        label.textContent = "#" + a.attempt + " · " + a.delay.toFixed(2) + " s";
        const track = document.createElement("span");
        track.className = "track";
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.style.display = "block";
        bar.style.width = Math.min(100, (a.delay / cap) * 100).toFixed(1) + "%";
        track.appendChild(bar);
        row.append(label, track);
        attempts.appendChild(row);
      }
      li.appendChild(attempts);
      items.push(li);
    }
    list.replaceChildren(...items);
    const latest = outages[outages.length - 1];
    setText("last-attempts", latest.total_attempts);
  }

  function appendLog(entries) {
    const log = $("event-log");
    for (const e of entries) {
      const li = document.createElement("li");
      li.dataset.kind = e.kind;
      li.dataset.level = e.level;
      li.dataset.seq = e.seq;
      const time = document.createElement("time");
      time.dateTime = new Date(e.t * 1000).toISOString();
      time.textContent = fmtClock(e.t);
      const kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = e.kind;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = e.text;
      li.append(time, kind, text);
      log.prepend(li);
    }
    while (log.children.length > MAX_LOG) log.lastElementChild.remove();
  }

  // Countdowns move between updates too.
  function tick() {
    if (!last || !last.stats) return;
    const exp = last.stats.auth_expires_at;
    if (exp === null || exp === undefined) {
      setText("token-expiry", "–");
      $("token-bar").style.width = "0";
      return;
    }
    const left = exp - (Date.now() / 1000 + clockOffset);
    setText("token-expiry", left > 0 ? left.toFixed(1) + " s" : "expired");
    const ttl = last.config.token_ttl;
    $("token-bar").style.width = Math.max(0, Math.min(100, (left / ttl) * 100)).toFixed(1) + "%";
  }
  setInterval(tick, 200);

  // ------------------------------------------------------------------ live updates

  // The backend is gone (the demo stopped, or it cannot be reached): the badge says
  // so, and the buttons are disabled until the event stream is live again.
  function setOffline(kind, text) {
    const badge = $("state");
    badge.dataset.state = kind;
    badge.textContent = text;
    // What the page last heard is no longer news: don't present it as current.
    setText("server-status", "server: unknown (no contact with the demo)");
    last = null;
    setText("token-expiry", "–");
    $("token-bar").style.width = "0";
    for (const el of document.querySelectorAll("form[data-action] button, form[data-action] input")) {
      el.disabled = true;
    }
  }

  function setLive() {
    for (const el of document.querySelectorAll("form[data-action] button, form[data-action] input")) {
      el.disabled = false;
    }
  }

  function connect() {
    const source = new EventSource("/events");
    let stopped = false;
    source.addEventListener("open", () => {
      setText("panel-link", "panel: live");
      setLive();
    });
    source.addEventListener("update", (ev) => {
      const data = JSON.parse(ev.data);
      appendLog(data.log);
      render(data.snapshot);
    });
    source.addEventListener("bye", () => {
      stopped = true;
      source.close();
      setText("panel-link", "panel: the demo stopped");
      setOffline("stopped", "demo stopped");
    });
    source.addEventListener("error", () => {
      if (stopped) return;
      setText("panel-link", "panel: backend unreachable, retrying…");
      setOffline("unreachable", "demo unreachable");
    });
  }

  // ------------------------------------------------------------------ buttons

  function paramsOf(form) {
    const params = {};
    for (const input of form.querySelectorAll("input")) {
      const value = Number(input.value);
      if (input.name === "ms") params.seconds = value / 1000;
      else params[input.name] = value;
    }
    return params;
  }

  async function post(action, params) {
    const status = $("action-status");
    try {
      const response = await fetch("/api/" + action, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(params),
      });
      const body = await response.json();
      status.classList.toggle("error", !body.ok);
      status.textContent = body.ok ? body.message : "Not done: " + body.error;
    } catch (err) {
      status.classList.add("error");
      status.textContent = "The panel's backend did not answer (" + err + ")";
    }
  }

  for (const form of document.querySelectorAll("form[data-action]")) {
    // Each button is described by the hint under it (read after its name).
    const hint = form.querySelector(".hint");
    const button = form.querySelector("button");
    if (hint && button) {
      hint.id = "hint-" + form.dataset.action;
      button.setAttribute("aria-describedby", hint.id);
    }
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (!form.reportValidity()) return;
      post(form.dataset.action, paramsOf(form));
    });
  }

  connect();
})();
