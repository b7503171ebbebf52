// Herald's live dashboard.
//
// The API key comes from `?key=` (removed from the address bar at once) or the form, and is
// kept in sessionStorage for this tab only. The figures come from `dashboard/stream`: server-sent
// events read with fetch(), so the key travels in the Authorization header and never in a URL.
// Without a valid key the page shows the error and no figures.
'use strict';

(() => {
  const KEY_ITEM = 'herald.dashboard.key';
  const STREAM = 'dashboard/stream';
  const POINTS = 60; // a minute of one-second snapshots
  const RETRY_MS = 2000;

  const $ = (id) => document.getElementById(id);
  let memoryKey = null; // when sessionStorage is unavailable
  let controller = null;
  let previous = null; // the last snapshot of this stream, for rates
  const series = {
    connections: [], deliveries: [], p50: [], p99: [], memory: [],
  };

  // --- the key ---------------------------------------------------------------------------

  function storedKey() {
    try { return sessionStorage.getItem(KEY_ITEM); } catch (_) { return memoryKey; }
  }

  function storeKey(key) {
    memoryKey = key;
    try {
      if (key === null) sessionStorage.removeItem(KEY_ITEM); else sessionStorage.setItem(KEY_ITEM, key);
    } catch (_) { /* kept in memoryKey */ }
  }

  // `?key=...` is taken once and removed from the address bar and the history entry.
  function takeKeyFromAddress() {
    const url = new URL(location.href);
    if (!url.searchParams.has('key')) return;
    const key = url.searchParams.get('key');
    url.searchParams.delete('key');
    history.replaceState(null, '', url.pathname + url.search + url.hash);
    if (key) storeKey(key);
  }

  // --- formatting ------------------------------------------------------------------------

  const integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  const decimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

  function count(n) { return n == null ? '–' : integer.format(n); }
  function rate(n) { return n == null ? '–' : (n < 100 ? decimal.format(n) : integer.format(n)); }
  function micros(n) {
    if (n == null) return '–';
    return n < 10000 ? `${integer.format(n)} µs` : `${decimal.format(n / 1000)} ms`;
  }
  function bytes(n) {
    if (n == null) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return `${unit === 0 ? value : decimal.format(value)} ${units[unit]}`;
  }

  // Shows `text` in the element `id`, with the raw `value` in data-value for tools and tests.
  function show(id, text, value) {
    const el = $(id);
    if (!el) return;
    el.textContent = text;
    el.dataset.value = value == null ? '' : String(value);
  }

  function tone(el, level) {
    el.classList.remove('ok', 'warn', 'bad');
    if (level) el.classList.add(level);
  }

  // --- state of the page -----------------------------------------------------------------

  function setLive(text, level) {
    const el = $('live');
    el.textContent = text;
    tone(el, level);
  }

  function showError(text) {
    const el = $('error');
    el.textContent = text;
    el.hidden = !text;
  }

  // No figures without a valid key: hide them and empty every figure and chart.
  function clearFigures() {
    $('figures').hidden = true;
    for (const el of document.querySelectorAll('#figures output, #figures dd, #figures .tile small span')) {
      el.textContent = '';
      delete el.dataset.value;
    }
    $('checks').replaceChildren();
    for (const points of Object.values(series)) points.length = 0;
    previous = null;
    const health = $('health');
    health.textContent = 'no data';
    tone(health, null);
  }

  function askForKey() {
    $('key-form').hidden = false;
    $('forget').hidden = true;
    $('key-input').focus();
  }

  // --- the stream ------------------------------------------------------------------------

  function connect() {
    const key = storedKey();
    if (!key) { askForKey(); return; }
    if (controller) controller.abort();
    controller = new AbortController();
    const signal = controller.signal;
    previous = null;
    setLive('connecting…', null);
    read(key, signal).catch((error) => {
      if (signal.aborted) return;
      setLive('disconnected', 'warn');
      $('figures').classList.add('stale');
      showError(`The stream was interrupted (${error.message}); retrying.`);
      setTimeout(() => { if (!signal.aborted) connect(); }, RETRY_MS);
    });
  }

  async function read(key, signal) {
    const response = await fetch(STREAM, {
      headers: { Authorization: `Bearer ${key}`, Accept: 'text/event-stream' },
      cache: 'no-store',
      signal,
    });
    if (response.status === 401) {
      storeKey(null);
      clearFigures();
      setLive('not connected', 'bad');
      showError('The API key was refused (401). Enter a valid key to see the figures.');
      askForKey();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    $('key-form').hidden = true;
    $('forget').hidden = false;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      let end = buffered.indexOf('\n\n');
      while (end >= 0) {
        // A bug in rendering is reported as the uncaught error it is, not taken for a broken
        // stream (which would only be retried).
        try { event(buffered.slice(0, end)); } catch (error) { reportError(error); }
        buffered = buffered.slice(end + 2);
        end = buffered.indexOf('\n\n');
      }
    }
    throw new Error('the server ended the stream');
  }

  // One event: `event:` and `data:` lines (the server sends one data line per event).
  function event(block) {
    let name = 'message';
    let data = '';
    for (const line of block.split('\n')) {
      if (line.startsWith('event:')) name = line.slice(6).trim();
      else if (line.startsWith('data:')) data += line.slice(5).trim();
    }
    if (!data) return;
    const body = JSON.parse(data);
    if (name === 'end') {
      setLive('server shutting down', 'warn');
      return;
    }
    render(body);
  }

  // --- rendering -------------------------------------------------------------------------

  function perSecond(now, before, pick) {
    if (!before || now.elapsedMs <= before.elapsedMs) return null;
    return Math.max(0, pick(now) - pick(before)) * 1000 / (now.elapsedMs - before.elapsedMs);
  }

  function push(points, value) {
    points.push(value);
    if (points.length > POINTS) points.shift();
  }

  function render(s) {
    showError('');
    setLive('live', 'ok');
    const main = $('figures');
    main.hidden = false;
    main.classList.remove('stale');

    const deliveries = perSecond(s, previous, (x) => x.messages.delivered);
    const publications = perSecond(s, previous, (x) => x.messages.published);
    previous = s;

    const gateway = (s.health.components || {}).gateway || {};
    show('connections', count(s.connections), s.connections);
    show('max-connections', count(gateway.maxConnections), gateway.maxConnections);
    show('users', count(s.users), s.users);
    show('subscriptions', count(s.subscriptions), s.subscriptions);
    show('topics', count(s.topics), s.topics);
    show('history-bytes', bytes(s.history.bytes), s.history.bytes);
    show('deliveries-rate', rate(deliveries), deliveries);
    show('deliveries-total', count(s.messages.delivered), s.messages.delivered);
    show('published-rate', rate(publications), publications);
    show('published-total', count(s.messages.published), s.messages.published);

    const latency = s.latency;
    show('latency-p99', count(latency.p99Us), latency.p99Us);
    show('latency-p50', micros(latency.p50Us), latency.p50Us);
    show('latency-p90', micros(latency.p90Us), latency.p90Us);
    show('latency-p99-detail', micros(latency.p99Us), latency.p99Us);
    show('latency-p999', micros(latency.p999Us), latency.p999Us);
    show('latency-samples', count(latency.samples), latency.samples);

    show('queue-depth', count(s.operations.queued), s.operations.queued);
    show('queue-rejected', count(s.operations.rejected), s.operations.rejected);
    show('events-pending', count(s.events.pending), s.events.pending);
    show('events-redelivered', count(s.events.redelivered), s.events.redelivered);
    show('shed', count(s.messages.shed), s.messages.shed);
    show('slow-consumer-closes', count(s.messages.slowConsumerCloses), s.messages.slowConsumerCloses);
    show('rate-limited', count(s.messages.rateLimited), s.messages.rateLimited);
    show('degradation-closes', count(s.connectionTotals.degradationCloses), s.connectionTotals.degradationCloses);

    const memory = s.memory;
    show('memory-used', bytes(memory.usedBytes), memory.usedBytes);
    show('memory-used-detail', bytes(memory.usedBytes), memory.usedBytes);
    show('memory-limit', memory.limitBytes == null ? 'no budget' : bytes(memory.limitBytes), memory.limitBytes);
    show('memory-rss', bytes(memory.rssBytes), memory.rssBytes);
    const pressure = memory.pressurePercent;
    show('memory-pressure', pressure == null ? '–' : `${decimal.format(pressure)} %`, pressure);
    const bar = $('memory-bar');
    bar.style.width = `${Math.min(100, pressure || 0)}%`;
    tone(bar, s.degradation.level >= 2 ? 'bad' : s.degradation.level === 1 ? 'warn' : null);

    const levelTone = ['ok', 'warn', 'bad'][s.degradation.level] || 'bad';
    show('degradation', s.degradation.name, s.degradation.level);
    show('degradation-level', String(s.degradation.level), s.degradation.level);
    tone($('degradation'), levelTone);
    show('leak', s.leak.severity, s.leak.severity);
    const slope = s.leak.slopeBytesPerMinute;
    show('leak-slope', slope == null ? '–' : `${bytes(Math.abs(slope))}/min${slope < 0 ? ' down' : ''}`, slope);
    const advice = $('leak-advice');
    advice.textContent = s.leak.recommendation || '';
    advice.hidden = !s.leak.recommendation;

    const forecast = s.forecast;
    show('forecast-connections', forecast ? count(forecast.connectionsIn15Min) : 'gathering…', forecast && forecast.connectionsIn15Min);
    show('forecast-deliveries', forecast ? rate(forecast.deliveriesPerSecondIn15Min) : 'gathering…', forecast && forecast.deliveriesPerSecondIn15Min);
    show('forecast-confidence', forecast ? `${integer.format(forecast.confidence * 100)} %` : '–', forecast && forecast.confidence);

    renderHealth(s.health);

    push(series.connections, s.connections);
    if (deliveries != null) push(series.deliveries, deliveries);
    if (latency.samples > 0) { push(series.p50, latency.p50Us); push(series.p99, latency.p99Us); }
    push(series.memory, memory.usedBytes);
    drawAll();
  }

  const HEALTH_TONE = { ok: 'ok', degraded: 'warn', failing: 'bad', shutting_down: 'warn', draining: 'warn' };

  function renderHealth(health) {
    const overall = $('health');
    overall.textContent = `health: ${health.status.replace('_', ' ')}`;
    overall.dataset.value = health.status;
    tone(overall, HEALTH_TONE[health.status] || 'bad');
    const rows = [];
    for (const [name, check] of Object.entries(health.components || {})) {
      const dt = document.createElement('dt');
      dt.textContent = name;
      const dd = document.createElement('dd');
      dd.textContent = check.status;
      dd.title = check.message || '';
      tone(dd, HEALTH_TONE[check.status] || 'bad');
      rows.push(dt, dd);
    }
    $('checks').replaceChildren(...rows);
  }

  // --- charts: lines on <canvas>, drawn by hand -------------------------------------------

  function colour(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';
  }

  function draw(canvas, lines, format) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext('2d');
    ctx.clearRect(0, 0, width, height);
    const peak = Math.max(0, ...lines.flatMap((l) => l.points));
    canvas.dataset.peak = String(peak); // the highest value in view, for tools and tests
    const top = Math.max(1, peak) * 1.1;
    const pad = 4 * ratio;
    const x = (i) => pad + (width - 2 * pad) * (i / (POINTS - 1));
    const y = (v) => height - pad - (height - 2 * pad) * (v / top);

    ctx.strokeStyle = colour('--line');
    ctx.lineWidth = ratio;
    for (let g = 1; g <= 3; g += 1) {
      const gy = Math.round(pad + (height - 2 * pad) * (g / 4)) + 0.5;
      ctx.beginPath(); ctx.moveTo(0, gy); ctx.lineTo(width, gy); ctx.stroke();
    }
    ctx.fillStyle = colour('--muted');
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
    ctx.fillText(format(peak), pad, pad);

    for (const line of lines) {
      const points = line.points;
      if (points.length === 0) continue;
      const start = POINTS - points.length;
      const stroke = colour(line.colour);
      ctx.beginPath();
      points.forEach((v, i) => (i === 0 ? ctx.moveTo(x(start + i), y(v)) : ctx.lineTo(x(start + i), y(v))));
      ctx.strokeStyle = stroke;
      ctx.lineWidth = 2 * ratio;
      ctx.lineJoin = 'round';
      ctx.stroke();
      if (line.fill) {
        ctx.lineTo(x(POINTS - 1), height - pad);
        ctx.lineTo(x(start), height - pad);
        ctx.closePath();
        ctx.globalAlpha = 0.12;
        ctx.fillStyle = stroke;
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    }
  }

  function drawAll() {
    if ($('figures').hidden) return;
    draw($('chart-connections'), [{ points: series.connections, colour: '--accent', fill: true }], count);
    draw($('chart-deliveries'), [{ points: series.deliveries, colour: '--accent', fill: true }], rate);
    draw($('chart-latency'), [
      { points: series.p99, colour: '--accent2', fill: false },
      { points: series.p50, colour: '--accent', fill: true },
    ], micros);
    draw($('chart-memory'), [{ points: series.memory, colour: '--accent', fill: true }], bytes);
  }

  // --- start -----------------------------------------------------------------------------

  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('key-input').value.trim();
    $('key-input').value = '';
    if (!key) return;
    storeKey(key);
    showError('');
    connect();
  });

  $('forget').addEventListener('click', () => {
    if (controller) controller.abort();
    storeKey(null);
    clearFigures();
    setLive('not connected', null);
    askForKey();
  });

  window.addEventListener('resize', drawAll);

  takeKeyFromAddress();
  connect();
})();
