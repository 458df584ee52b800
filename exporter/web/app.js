"use strict";
// The live page: records (exporter/live.py, README "The jsonl log") from /events, or from a jsonl log
// the user opens, drawn as small canvas charts. Every chart keeps what it drew in data-last (the
// latest value of each series) for the browser tests.

const LIVE_POINTS = 240;  // two minutes at the default period
const OFF = {
  link: "The link collector is off (--no-collector.link).",
  tcp: "The tcp collector is off (--no-collector.tcp).",
  netstack: "The netstack collector is off (--no-collector.netstack).",
  mac: "The mac collector is off: it runs with --collector.mac.device IFACE.",
  process: "No process figures in this record.",
};
const ENTRIES = ["net_rx_softirq", "net_tx_softirq", "rx_syscall", "tx_syscall"];
const PALETTE = ["#2f6fdf", "#e8772e", "#2aa876", "#c8433a", "#8a5cd0", "#b5902c", "#3fa7c4", "#d0559f",
                 "#6b8e23", "#7f7f7f", "#1f4e9c", "#b35a1f", "#1d7a55", "#8c2d26"];

let history = [];
let source = null;

// ---- records -------------------------------------------------------------------------------------

// Counters as per-second rates whatever the record carries (the log has deltas).
function normalize(record) {
  if (record.counters_are !== "deltas") return record;
  const seconds = record.interval_seconds || 1;
  const counters = {};
  for (const [name, table] of Object.entries(record.counters || {})) {
    counters[name] = {labels: table.labels, samples: table.samples.map(row => [...row.slice(0, -1), row[row.length - 1] / seconds])};
  }
  return {...record, counters, counters_are: "rates"};
}

// {label value of `by`: summed value} over the rows of one table that match `where` (a label the table
// lacks is ""). Only the exporter's own network namespace: with --collector.netns, link and tcp series of
// other namespaces carry a netns label.
function grouped(record, section, name, by, where = {}) {
  where = {netns: "", ...where};
  const table = ((record[section] || {})[name]);
  const out = {};
  if (!table) return out;
  const at = table.labels.indexOf(by);
  const checks = Object.entries(where).map(([label, value]) => [table.labels.indexOf(label), value]);
  for (const row of table.samples) {
    if (checks.some(([index, value]) => (index < 0 ? "" : row[index]) !== value)) continue;
    const key = at < 0 ? "" : row[at];
    out[key] = (out[key] || 0) + row[row.length - 1];
  }
  return out;
}

function total(record, section, name, where = {}) {
  return Object.values(grouped(record, section, name, "", where)).reduce((a, b) => a + b, 0);
}

function has(record, section, name) { return Boolean((record[section] || {})[name]); }

// Why a collector's panels are empty: null when it ran in the latest record.
function unavailable(collector) {
  const last = history[history.length - 1];
  if (!last) return "Waiting for the first interval…";
  const status = last.collectors || {};
  if (!(collector in status)) return OFF[collector];
  return status[collector] === null ? null : `The ${collector} collector failed: ${status[collector]}`;
}

// ---- formatting ----------------------------------------------------------------------------------

function si(value, unit) {
  const steps = ["", "k", "M", "G", "T"];
  let index = 0;
  let v = Math.abs(value);
  while (v >= 1000 && index < steps.length - 1) { v /= 1000; index++; }
  const digits = v >= 100 || index === 0 && Number.isInteger(value) ? 0 : v >= 10 ? 1 : 2;
  return `${(Math.sign(value) * v).toFixed(digits)} ${steps[index]}${unit}`;
}
const bytesPerSecond = v => si(v, "B/s");
const perSecond = v => si(v, "/s");
const percent = v => `${v.toFixed(v >= 10 ? 0 : 1)} %`;
const count = v => si(v, "");
const mebibytes = v => `${(v / 1048576).toFixed(1)} MiB`;

function clock(record) { return record ? record.time.slice(11, 19) : ""; }

// ---- charts --------------------------------------------------------------------------------------

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 400, height = canvas.clientHeight || 150;
  if (canvas.width !== Math.round(width * ratio)) { canvas.width = Math.round(width * ratio); canvas.height = Math.round(height * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  g.font = "11px system-ui, sans-serif";
  return {g, width, height, left: 64, right: width - 6, top: 6, bottom: height - 16};
}

function axes(frame, max, format, times) {
  const {g, left, right, top, bottom} = frame;
  g.strokeStyle = "#e3e7ee"; g.fillStyle = "#5f6b7c"; g.lineWidth = 1; g.textAlign = "right"; g.textBaseline = "middle";
  for (let i = 0; i <= 2; i++) {
    const y = bottom - (bottom - top) * i / 2;
    g.beginPath(); g.moveTo(left, y + 0.5); g.lineTo(right, y + 0.5); g.stroke();
    g.fillText(format(max * i / 2), left - 4, y);
  }
  if (times.length) {
    g.textBaseline = "top";
    g.textAlign = "left"; g.fillText(clock(times[0]), left, bottom + 3);
    g.textAlign = "right"; g.fillText(clock(times[times.length - 1]), right, bottom + 3);
  }
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  return [1, 2, 2.5, 5, 10].map(step => step * power).find(step => step >= value);
}

function remember(canvas, series) {
  const last = {};
  for (const s of series) last[s.name] = s.values.length ? s.values[s.values.length - 1] : null;
  canvas.dataset.last = JSON.stringify(last);
  canvas.dataset.points = String(series.length ? series[0].values.length : 0);
}

// Lines over time; series: [{name, color, values}].
function lines(canvas, times, series, format) {
  const frame = prepare(canvas);
  const max = niceMax(Math.max(0, ...series.flatMap(s => s.values)));
  axes(frame, max, format, times);
  const {g, left, right, top, bottom} = frame;
  const step = (right - left) / Math.max(1, times.length - 1);
  for (const s of series) {
    g.strokeStyle = s.color; g.lineWidth = 1.6; g.beginPath();
    s.values.forEach((v, i) => { const x = left + i * step, y = bottom - (bottom - top) * v / max; i ? g.lineTo(x, y) : g.moveTo(x, y); });
    g.stroke();
  }
  remember(canvas, series);
}

// Stacked bars: one per interval (columns are records), or with `named` one per column name.
function stacked(canvas, columns, series, format, named = false) {
  const frame = prepare(canvas);
  const n = columns.length;
  const sums = Array.from({length: n}, (_, i) => series.reduce((a, s) => a + (s.values[i] || 0), 0));
  const max = niceMax(Math.max(0, ...sums));
  axes(frame, max, format, named ? [] : columns);
  const {g, left, right, top, bottom} = frame;
  const width = (right - left) / Math.max(1, n);
  for (let i = 0; i < n; i++) {
    let y = bottom;
    if (named) {
      g.fillStyle = "#5f6b7c"; g.textAlign = "center"; g.textBaseline = "top";
      g.fillText(columns[i], left + (i + 0.5) * width, bottom + 3, width);
    }
    for (const s of series) {
      const h = (bottom - top) * (s.values[i] || 0) / max;
      if (h <= 0) continue;
      g.fillStyle = s.color; g.fillRect(left + i * width, y - h, Math.max(1, width - (width > 4 ? 1 : 0)), h);
      y -= h;
    }
  }
  remember(canvas, series);
  canvas.dataset.bars = String(sums.filter(v => v > 0).length);
}

// Bars of current values by category: [{name, value}].
function bars(canvas, items, format, color = PALETTE[0]) {
  const frame = prepare(canvas);
  const max = niceMax(Math.max(0, ...items.map(item => item.value)));
  axes(frame, max, format, []);
  const {g, left, right, top, bottom} = frame;
  const width = (right - left) / Math.max(1, items.length);
  const every = Math.ceil(36 / width);  // label every bar that has room
  g.textAlign = "center"; g.textBaseline = "top";
  items.forEach((item, i) => {
    const h = (bottom - top) * item.value / max;
    g.fillStyle = item.color || color; g.fillRect(left + i * width + 2, bottom - h, Math.max(1, width - 4), h);
    if (i % every === 0) { g.fillStyle = "#5f6b7c"; g.fillText(item.name, left + (i + 0.5) * width, bottom + 3); }
  });
  canvas.dataset.last = JSON.stringify(Object.fromEntries(items.map(item => [item.name, item.value])));
}

// ---- panels --------------------------------------------------------------------------------------

const main = document.getElementById("panels");

function section(id, title) {
  let element = document.getElementById(id);
  if (!element) {
    element = document.createElement("section");
    element.id = id;
    element.innerHTML = `<h2></h2><div class="cards"></div>`;
    element.querySelector("h2").textContent = title;
    main.appendChild(element);
  }
  return element.querySelector(".cards");
}

// A card with a title, a line saying what it shows and in which unit, and a canvas (or a message why not).
function card(parent, key, title, what, kind = "canvas") {
  let element = parent.querySelector(`[data-card="${CSS.escape(key)}"]`);
  if (!element) {
    element = document.createElement("div");
    element.className = "card";
    element.dataset.card = key;
    element.innerHTML = `<h3></h3><p class="what"></p><p class="why" hidden></p><${kind} data-chart=""></${kind}><div class="legend"></div>`;
    element.querySelector("h3").textContent = title;
    element.querySelector("[data-chart]").dataset.chart = key;
    parent.appendChild(element);
  }
  element.querySelector(".what").textContent = what;
  return element;
}

function showWhy(element, why) {
  const message = element.querySelector(".why");
  message.hidden = !why;
  message.textContent = why || "";
  element.querySelector("[data-chart]").hidden = Boolean(why);
  element.querySelector(".legend").hidden = Boolean(why);
  return Boolean(why);
}

function legend(element, series) {
  const box = element.querySelector(".legend");
  const text = series.map(s => s.name).join("|");
  if (box.dataset.text === text) return;
  box.dataset.text = text;
  box.replaceChildren(...series.map(s => { const item = document.createElement("span"); item.innerHTML = `<i></i>`; item.firstChild.style.background = s.color; item.append(s.name); return item; }));
}

function timeSeries(name, color, value) { return {name, color, values: history.map(value)}; }

function chart(element, draw, series, format) {
  legend(element, series);
  draw(element.querySelector("canvas"), history, series, format);
}

function drawLinks() {
  const parent = section("links", "Interfaces");
  const why = unavailable("link");
  const last = history[history.length - 1];
  const devices = last ? Object.keys(grouped(last, "gauges", "netio_network_up", "device")).sort() : [];
  const busy = devices.filter(device => history.some(r =>
    total(r, "counters", "netio_network_receive_packets_total", {device}) + total(r, "counters", "netio_network_transmit_packets_total", {device}) > 0));
  const idle = parent.parentElement.querySelector(".idle") || parent.insertAdjacentElement("beforebegin", document.createElement("p"));
  idle.className = "idle";
  if (why) {
    showWhy(card(parent, "link", "Interfaces", "Throughput and packets of every interface the device regexes select."), why);
    idle.textContent = "";
    parent.querySelectorAll("[data-card^='link-']").forEach(element => element.remove());
    return;
  }
  parent.querySelector("[data-card='link']")?.remove();
  const quiet = devices.filter(device => !busy.includes(device));
  idle.textContent = quiet.length ? `No packets in this window: ${quiet.join(", ")}.` : "";
  for (const element of parent.querySelectorAll("[data-card^='link-']")) {
    if (!busy.includes(element.dataset.card.split(":")[1])) element.remove();
  }
  for (const device of busy) {
    const rate = (name) => r => total(r, "counters", name, {device});
    chart(card(parent, `link-bytes:${device}`, `${device}: throughput`, "Bytes per second received (rx) and transmitted (tx), frames as the interface counts them."),
      lines, [timeSeries("rx", PALETTE[0], rate("netio_network_receive_bytes_total")), timeSeries("tx", PALETTE[1], rate("netio_network_transmit_bytes_total"))], bytesPerSecond);
    chart(card(parent, `link-packets:${device}`, `${device}: packets`, "Packets per second received (rx) and transmitted (tx)."),
      lines, [timeSeries("rx", PALETTE[0], rate("netio_network_receive_packets_total")), timeSeries("tx", PALETTE[1], rate("netio_network_transmit_packets_total"))], perSecond);
    const problems = [["rx dropped", "netio_network_receive_dropped_total"], ["tx dropped", "netio_network_transmit_dropped_total"],
      ["rx errors", "netio_network_receive_errors_total"], ["tx errors", "netio_network_transmit_errors_total"]]
      .map(([label, name], i) => timeSeries(label, PALETTE[2 + i], rate(name))).filter(s => s.values.some(v => v > 0));
    const key = `link-problems:${device}`;
    if (problems.length) chart(card(parent, key, `${device}: drops and errors`, "Packets per second dropped or in error (shown only while non-zero)."), lines, problems, perSecond);
    else parent.querySelector(`[data-card="${CSS.escape(key)}"]`)?.remove();
  }
}

function drawTcp() {
  const parent = section("tcp", "TCP");
  const why = unavailable("tcp");
  const last = history[history.length - 1];
  const states = card(parent, "tcp-states", "Connections by state", "TCP sockets now, by state (a loopback connection is two).");
  const throughput = card(parent, "tcp-bytes", "TCP throughput", "Bytes per second sent and received over all TCP sockets (tcp_info bytes_sent, bytes_received).");
  const retrans = card(parent, "tcp-retrans", "Retransmissions", "Segments retransmitted per second, and as % of segments sent.");
  const rtt = card(parent, "tcp-rtt", "RTT distribution", "Established sockets by smoothed round-trip time now (count per bucket, upper bound in ms).");
  if ([states, throughput, retrans, rtt].map(element => showWhy(element, why)).some(Boolean)) return;
  const byState = grouped(last, "gauges", "netio_tcp_connections", "state");
  bars(states.querySelector("canvas"), Object.entries(byState).filter(([, v]) => v > 0).map(([name, value]) => ({name, value})), count);
  chart(throughput, lines, [timeSeries("sent", PALETTE[0], r => total(r, "counters", "netio_tcp_sent_bytes_total")),
    timeSeries("received", PALETTE[1], r => total(r, "counters", "netio_tcp_received_bytes_total"))], bytesPerSecond);
  chart(retrans, lines, [timeSeries("retransmitted", PALETTE[3], r => total(r, "counters", "netio_tcp_retransmitted_segments_total"))], perSecond);
  const sent = history.reduce((a, r) => a + total(r, "counters", "netio_tcp_sent_segments_total"), 0);
  const again = history.reduce((a, r) => a + total(r, "counters", "netio_tcp_retransmitted_segments_total"), 0);
  const share = retrans.querySelector(".share") || retrans.querySelector(".legend").appendChild(document.createElement("span"));
  share.className = "share";
  share.textContent = `${sent ? (100 * again / sent).toFixed(2) : "0"} % of the segments sent in this window`;
  const cumulative = Object.entries(grouped(last, "gauges", "netio_tcp_rtt_seconds_bucket", "le"))
    .map(([le, value]) => [le === "+Inf" ? Infinity : Number(le), value]).sort((a, b) => a[0] - b[0]);
  const buckets = cumulative.map(([le, value], i) => ({
    name: le === Infinity ? "more" : `${+(le * 1000).toPrecision(3)}`, value: value - (i ? cumulative[i - 1][1] : 0)}));
  const first = buckets.findIndex(bucket => bucket.value > 0);  // the buckets from the first to the last one used
  const end = buckets.length - [...buckets].reverse().findIndex(bucket => bucket.value > 0);
  bars(rtt.querySelector("canvas"), first < 0 ? [] : buckets.slice(first, end), count, PALETTE[4]);
}

function drawNetstack() {
  const parent = section("netstack", "Network stack CPU (eBPF)");
  const why = unavailable("netstack");
  const last = history[history.length - 1];
  const perCpu = card(parent, "netstack-cpu", "CPU share per CPU, by entry", "Share of each CPU spent in the network stack in the latest interval, % of that CPU (entries are exclusive: they add up).");
  const overall = card(parent, "netstack-total", "CPU share over time, by entry", "All CPUs together, % of one CPU, per interval.");
  const netRx = card(parent, "netstack-netrx", "NET_RX breakdown", "Where NET_RX softirq time goes: stack samples per second by category (each is 1/f s of CPU at -f HZ).");
  if ([perCpu, overall, netRx].map(element => showWhy(element, why)).some(Boolean)) return;
  const cpuNames = [...new Set(history.flatMap(r => Object.keys(grouped(r, "counters", "netio_netstack_cpu_seconds_total", "cpu"))))].sort((a, b) => a - b);
  const entrySeries = ENTRIES.map((entry, i) => ({name: entry, color: PALETTE[i],
    values: cpuNames.map(cpu => 100 * total(last, "counters", "netio_netstack_cpu_seconds_total", {cpu, entry}))}));
  legend(perCpu, entrySeries);
  stacked(perCpu.querySelector("canvas"), cpuNames.map(cpu => `cpu ${cpu}`), entrySeries, percent, true);
  chart(overall, stacked, ENTRIES.map((entry, i) => timeSeries(entry, PALETTE[i], r => 100 * total(r, "counters", "netio_netstack_cpu_seconds_total", {entry}))), percent);
  if (!history.some(r => has(r, "counters", "netio_netstack_rx_samples_total"))) {
    showWhy(netRx, "NET_RX stack sampling is off (-f 0).");
    return;
  }
  const categories = [...new Set(history.flatMap(r => Object.keys(grouped(r, "counters", "netio_netstack_rx_samples_total", "category"))))].sort();
  chart(netRx, stacked, categories.map((category, i) => timeSeries(category, PALETTE[i % PALETTE.length],
    r => total(r, "counters", "netio_netstack_rx_samples_total", {category}))), perSecond);
}

function drawMac() {
  const parent = section("mac", "Clients by MAC");
  const why = unavailable("mac");
  const element = card(parent, "mac-top", "Top clients", "Bytes per second per client MAC in the latest interval, with its last IPv4 and IPv6 address.", "table");
  if (showWhy(element, why)) return;
  const last = history[history.length - 1];
  const clients = {};
  for (const [name, field] of [["netio_mac_download_bytes_total", "down"], ["netio_mac_upload_bytes_total", "up"]]) {
    const table = last.counters[name];
    if (!table) continue;
    const [device, mac] = ["device", "mac"].map(label => table.labels.indexOf(label));
    for (const row of table.samples) {
      const client = clients[row[device] + " " + row[mac]] ||= {device: row[device], mac: row[mac], down: 0, up: 0, ipv4: "", ipv6: ""};
      client[field] += row[row.length - 1];
    }
  }
  const info = (last.gauges || {}).netio_mac_info;
  if (info) {
    const at = label => info.labels.indexOf(label);
    for (const row of info.samples) {
      const client = clients[row[at("device")] + " " + row[at("mac")]];
      if (client) { client.ipv4 = row[at("ipv4")]; client.ipv6 = row[at("ipv6")]; }
    }
  }
  const top = Object.values(clients).sort((a, b) => (b.down + b.up) - (a.down + a.up)).slice(0, 10);
  const table = element.querySelector("table");
  table.innerHTML = "<tr><th>device</th><th>MAC</th><th>IPv4</th><th>IPv6</th><th class='num'>download</th><th class='num'>upload</th></tr>";
  for (const client of top) {
    const row = table.insertRow();
    for (const text of [client.device, client.mac, client.ipv4, client.ipv6]) row.insertCell().textContent = text;
    for (const value of [client.down, client.up]) { const cell = row.insertCell(); cell.className = "num"; cell.textContent = bytesPerSecond(value); }
  }
  if (!top.length) table.insertRow().insertCell().textContent = "No client traffic in this interval.";
}

function drawExporter() {
  const parent = section("exporter", "The exporter itself");
  const why = unavailable("process");
  const cpu = card(parent, "exporter-cpu", "Exporter CPU", "The exporter's own CPU time, % of one core, averaged over the last 10 intervals (the kernel counts it in 10 ms ticks).");
  const memory = card(parent, "exporter-memory", "Exporter memory", "Resident memory, MiB.");
  if ([cpu, memory].map(element => showWhy(element, why)).some(Boolean)) return;
  const used = history.map(r => 100 * total(r, "counters", "process_cpu_seconds_total") * r.interval_seconds);
  const seconds = history.map(r => r.interval_seconds);
  const sum = (values, i) => values.slice(Math.max(0, i - 9), i + 1).reduce((a, b) => a + b, 0);
  legend(cpu, [{name: "cpu", color: PALETTE[0]}]);
  lines(cpu.querySelector("canvas"), history, [{name: "cpu", color: PALETTE[0], values: used.map((_, i) => sum(used, i) / sum(seconds, i))}], percent);
  chart(memory, lines, [timeSeries("resident", PALETTE[2], r => total(r, "gauges", "process_resident_memory_bytes"))], mebibytes);
}

let pending = false;
function draw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    for (const panel of [drawLinks, drawTcp, drawNetstack, drawMac, drawExporter]) panel();
  });
}

// ---- sources -------------------------------------------------------------------------------------

const status = document.getElementById("status");
function say(text, bad = false) { status.textContent = text; status.classList.toggle("bad", bad); }

function live() {
  history = [];
  document.getElementById("live").hidden = true;
  document.body.dataset.mode = "live";
  source = new EventSource("events");
  source.onopen = () => say("live");
  source.onerror = () => say("disconnected; reconnecting…", true);
  source.onmessage = message => {
    history.push(normalize(JSON.parse(message.data)));
    if (history.length > LIVE_POINTS) history.shift();
    document.body.dataset.events = String(Number(document.body.dataset.events || 0) + 1);  // drawn or not (hidden tabs draw later)
    say(`live · ${clock(history[history.length - 1])}`);
    draw();
  };
  draw();
}

// The browser reads the file: the server never opens a path a client names.
document.getElementById("replay").addEventListener("change", async event => {
  const file = event.target.files[0];
  if (!file) return;
  if (source) { source.close(); source = null; }
  const records = [];
  let bad = 0;
  for (const line of (await file.text()).split("\n")) {
    if (!line.trim()) continue;
    try { records.push(normalize(JSON.parse(line))); } catch { bad++; }
  }
  history = records.filter(record => record && record.time && record.counters);
  bad += records.length - history.length;
  document.body.dataset.mode = "replay";
  document.getElementById("live").hidden = false;
  say(history.length ? `replay of ${file.name}: ${history.length} intervals, ${history[0].time} to ${history[history.length - 1].time}` +
      (bad ? ` (${bad} ${bad === 1 ? "line" : "lines"} not understood)` : "") : `${file.name}: no records`, !history.length);
  event.target.value = "";
  draw();
});
document.getElementById("live").addEventListener("click", live);
live();
