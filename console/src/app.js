// Warren's web console: one page over Warren's REST API. Signed in, the browser holds
// an http-only session cookie; every request that changes something carries the
// session's CSRF token. Every route is a fragment of /console/ (#/...).
import { Terminal } from '/console/vendor/xterm.mjs';
import { FitAddon } from '/console/vendor/addon-fit.mjs';

const session = { tenant: null, operator: false, csrf: null };
// What the current view set up (timers, sockets, observers), undone on navigation.
let cleanups = [];

// ---------- small helpers ----------

/** Builds an element; strings become text nodes (never HTML). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n < 10 && i > 0 ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

function parseSize(s) {
  s = (s || '').trim();
  if (!s) return undefined;
  const m = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)?$/i.exec(s);
  if (!m) throw new Error(`${s}: use a size such as 512M or 2G`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2].toLowerCase()];
  return Math.round(parseFloat(m[1]) * mult);
}

/** `n` bytes as parseSize reads them back exactly: 512M rather than 536870912. */
function sizeText(n) {
  if (n === null || n === undefined) return '';
  for (const [unit, mult] of [['T', 1024 ** 4], ['G', 1024 ** 3], ['M', 1024 ** 2], ['K', 1024]]) {
    if (n >= mult && n % mult === 0) return `${n / mult}${unit}`;
  }
  return String(n);
}

/** A whole number of at least `min` from a form field, or undefined when it is empty. */
function parseCount(s, what, min = 0) {
  s = (s || '').trim();
  if (!s) return undefined;
  if (!/^\d+$/.test(s) || Number(s) < min) throw new Error(`${what}: use a whole number of at least ${min}`);
  return Number(s);
}

function ago(iso) {
  if (!iso) return '—';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d`;
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : '—';
}

function say(message, kind = '') {
  const box = document.getElementById('status');
  box.replaceChildren(message ? h('div', { class: `banner ${kind}` }, message) : '');
  if (kind !== 'error' && message) setTimeout(() => { if (box.textContent === message) box.replaceChildren(); }, 4000);
}

function enc(s) { return encodeURIComponent(s); }

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** Calls the API. `json` is sent as JSON; `body` as is; `raw` returns the Response. */
async function api(method, path, { json, body, raw = false, headers = {} } = {}) {
  const hdrs = { ...headers };
  if (method !== 'GET' && method !== 'HEAD' && session.csrf) hdrs['X-CSRF-Token'] = session.csrf;
  let payload = body;
  if (json !== undefined) {
    hdrs['Content-Type'] = 'application/json';
    payload = JSON.stringify(json);
  }
  const r = await fetch(path, { method, headers: hdrs, body: payload, credentials: 'same-origin' });
  if (!r.ok) {
    let code = '', message = '';
    try { ({ code, message } = await r.json()); } catch { message = `HTTP ${r.status}`; }
    if (r.status === 401 && !path.startsWith('/console/session')) {
      session.tenant = null;
      location.hash = '#/signin';
    }
    throw new ApiError(r.status, code, message);
  }
  if (raw) return r;
  if (r.status === 204) return null;
  const text = await r.text();
  return text ? JSON.parse(text) : null;
}

/** Reads an NDJSON response line by line. */
async function eachLine(response, fn) {
  const reader = response.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) fn(JSON.parse(line));
    }
  }
  if (buf.trim()) fn(JSON.parse(buf));
}

/** Runs `fn` now and every `ms` while the view lives. */
function every(ms, fn) {
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    try { await fn(); } catch (e) { if (!(e instanceof ApiError && e.status === 401)) console.warn(e); }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  let timer = setTimeout(tick, 0);
  cleanups.push(() => { stopped = true; clearTimeout(timer); });
}

function failed(e) {
  say(e instanceof ApiError ? `${e.message} (${e.code || e.status})` : String(e.message || e), 'error');
}

/** A button whose click runs `fn`, disabled meanwhile, errors shown. */
function act(label, fn, attrs = {}) {
  const b = h('button', { type: 'button', ...attrs }, label);
  b.addEventListener('click', async () => {
    b.disabled = true;
    try { await fn(); } catch (e) { failed(e); } finally { b.disabled = false; }
  });
  return b;
}

function table(headers, rows, { empty = 'Nothing here yet.', cards = true } = {}) {
  const head = h('thead', {}, h('tr', {}, headers.map(([label, cls]) => h('th', { class: cls || null, scope: 'col' }, label))));
  const body = h('tbody', {});
  if (!rows.length) body.append(h('tr', {}, h('td', { colspan: headers.length, class: 'empty' }, empty)));
  for (const cells of rows) {
    body.append(h('tr', {}, cells.map((c, i) => h('td', { class: headers[i][1] || null, 'data-label': headers[i][0] }, c))));
  }
  return h('div', { class: 'table-wrap' }, h('table', { class: cards ? 'cards' : '' }, head, body));
}

function mount(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes);
}

// ---------- sign-in ----------

async function whoami() {
  try {
    const s = await api('GET', '/console/session');
    Object.assign(session, { tenant: s.tenant, operator: s.operator, csrf: s.csrf_token });
  } catch {
    Object.assign(session, { tenant: null, operator: false, csrf: null });
  }
  showChrome();
}

function showChrome() {
  const signed = !!session.tenant;
  document.getElementById('nav').hidden = !signed;
  document.getElementById('who').hidden = !signed;
  document.getElementById('nav-pools').hidden = !session.operator;
  document.getElementById('tenant').textContent = signed ? `tenant ${session.tenant}` : '';
}

function signInView() {
  const key = h('input', { type: 'password', name: 'api_key', autocomplete: 'current-password', required: true, id: 'api-key' });
  const form = h('form', {},
    h('label', { for: 'api-key' }, 'API key', key),
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    h('p', { class: 'muted' }, 'A key is made on the daemon\'s host: warren keys create TENANT.'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try {
      const s = await api('POST', '/console/session', { json: { api_key: key.value } });
      Object.assign(session, { tenant: s.tenant, operator: s.operator, csrf: s.csrf_token });
      key.value = '';
      showChrome();
      say('');
      location.hash = '#/';
    } catch (e) { failed(e); }
  });
  mount(h('div', { class: 'panel signin' }, h('h1', {}, 'Sign in to Warren'), form));
  key.focus();
}

// ---------- sandboxes ----------

function stateBadge(state) { return h('span', { class: `state ${state}` }, state); }

function sandboxLabel(s) { return s.name ? `${s.owner}/${s.name}` : s.id; }

function lifecycleButtons(s, after) {
  const call = (verb) => async () => { await api('POST', `/v1/sandboxes/${enc(s.id)}/${verb}`); say(`${sandboxLabel(s)}: ${verb} done`, 'ok'); await after(); };
  const out = [];
  if (s.state === 'running') out.push(act('Pause', call('pause')), act('Stop', call('stop')), act('Snapshot', async () => {
    const name = prompt('Template name for the snapshot');
    if (!name) return;
    await api('POST', `/v1/sandboxes/${enc(s.id)}/snapshot`, { json: { name } });
    say(`snapshot ${name} made`, 'ok');
  }));
  if (s.state === 'paused') out.push(act('Resume', call('resume')), act('Stop', call('stop')));
  if (s.state === 'stopped') out.push(act('Start', call('start')));
  out.push(act('Remove', async () => {
    if (!confirm(`Remove ${sandboxLabel(s)} and its files?`)) return;
    await api('DELETE', `/v1/sandboxes/${enc(s.id)}`);
    say(`${sandboxLabel(s)} removed`, 'ok');
    await after(true);
  }, { class: 'danger' }));
  return out;
}

async function createForm(after) {
  const [templates, backends] = await Promise.all([
    api('GET', '/v1/templates').catch(() => []),
    api('GET', '/v1/backends').catch(() => []),
  ]);
  const f = {
    template: h('select', { id: 'new-template' }, templates.map((t) => h('option', { value: t.name }, t.name))),
    owner: h('input', { id: 'new-owner', placeholder: 'default', size: 10 }),
    name: h('input', { id: 'new-name', placeholder: 'optional', size: 12 }),
    memory: h('input', { id: 'new-memory', placeholder: 'e.g. 512M', size: 8 }),
    cpus: h('input', { id: 'new-cpus', placeholder: 'e.g. 0.5', size: 6, inputmode: 'decimal' }),
    pids: h('input', { id: 'new-pids', placeholder: 'e.g. 128', size: 6, inputmode: 'numeric' }),
    disk: h('input', { id: 'new-disk', placeholder: 'e.g. 1G', size: 8 }),
    network: h('select', { id: 'new-network' }, h('option', { value: 'none' }, 'none'), h('option', { value: 'nat' }, 'nat')),
    isolation: h('select', { id: 'new-isolation' }, h('option', { value: '' }, 'default'),
      backends.filter((b) => b.available).map((b) => h('option', { value: b.name }, b.name))),
  };
  const form = h('form', { class: 'panel', 'aria-label': 'New sandbox' },
    h('h2', {}, 'New sandbox'),
    h('div', { class: 'row' },
      field('Template', f.template), field('Owner', f.owner), field('Name', f.name),
      field('Memory', f.memory), field('CPUs', f.cpus), field('Processes', f.pids),
      field('Disk', f.disk), field('Network', f.network), field('Isolation', f.isolation),
      h('button', { type: 'submit', class: 'primary', id: 'new-create' }, 'Create')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    try {
      const resources = {};
      if (f.memory.value) resources.memory = parseSize(f.memory.value);
      if (f.disk.value) resources.disk = parseSize(f.disk.value);
      if (f.cpus.value) resources.cpu_millis = Math.round(parseFloat(f.cpus.value) * 1000);
      if (f.pids.value) resources.pids = parseInt(f.pids.value, 10);
      const req = { template: f.template.value, resources, network: f.network.value };
      if (f.owner.value) req.owner = f.owner.value;
      if (f.name.value) req.name = f.name.value;
      if (f.isolation.value) req.isolation = f.isolation.value;
      const s = await api('POST', '/v1/sandboxes', { json: req });
      say(`${sandboxLabel(s)} created`, 'ok');
      f.name.value = '';
      await after(s);
    } catch (e) { failed(e); } finally { btn.disabled = false; }
  });
  return form;
}

function usageCells(s) {
  const u = s.usage;
  return [
    u ? `${u.cpu_pct.toFixed(1)}%` : '—',
    u ? bytes(u.memory_bytes) : '—',
    u ? bytes(u.disk_bytes) : '—',
  ];
}

async function sandboxesView() {
  const filterText = h('input', { id: 'filter', type: 'search', placeholder: 'name, id, owner, template' });
  const filterState = h('select', { id: 'filter-state' }, ['', 'running', 'paused', 'stopped', 'creating'].map((s) => h('option', { value: s }, s || 'any state')));
  const list = h('div', { id: 'sandbox-list' });
  let last = [];
  const draw = () => {
    const q = filterText.value.trim().toLowerCase();
    const st = filterState.value;
    const rows = last
      .filter((s) => !st || s.state === st)
      .filter((s) => !q || [s.id, s.name, s.owner, s.template].some((v) => (v || '').toLowerCase().includes(q)))
      .map((s) => [
        h('a', { href: `#/sandbox/${enc(s.id)}`, class: 'sandbox-link' }, sandboxLabel(s)),
        stateBadge(s.state), s.owner, s.template, s.isolation || 'namespace',
        ...usageCells(s), ago(s.last_active_at),
        h('div', { class: 'actions' }, lifecycleButtons(s, refresh)),
      ]);
    list.replaceChildren(table([
      ['Sandbox'], ['State'], ['Owner'], ['Template'], ['Backend'], ['CPU', 'num'], ['Memory', 'num'], ['Disk', 'num'], ['Idle', 'num'], ['Actions'],
    ], rows, { empty: 'No sandboxes. Create one above.' }));
  };
  const refresh = async () => { last = await api('GET', '/v1/sandboxes'); draw(); };
  filterText.addEventListener('input', draw);
  filterState.addEventListener('change', draw);
  mount(
    h('h1', {}, 'Sandboxes'),
    await createForm(async (s) => { await refresh(); if (s && s.id) location.hash = `#/sandbox/${enc(s.id)}`; }),
    h('div', { class: 'row', style: 'margin-bottom:10px' },
      h('label', { for: 'filter' }, 'Filter', filterText), h('label', { for: 'filter-state' }, 'State', filterState)),
    list);
  every(2000, refresh);
}

// ---------- one sandbox ----------

const TABS = ['terminal', 'files', 'processes', 'events', 'ports', 'usage'];

async function sandboxView(id, tab) {
  tab = TABS.includes(tab) ? tab : 'terminal';
  const head = h('div', { class: 'row' });
  const body = h('div', { id: 'tab-body' });
  let info = await api('GET', `/v1/sandboxes/${enc(id)}`);
  const drawHead = () => {
    head.replaceChildren(
      h('h1', {}, sandboxLabel(info), ' ', stateBadge(info.state)),
      h('span', { class: 'spacer' }),
      h('div', { class: 'actions' }, lifecycleButtons(info, async (gone) => {
        if (gone) { location.hash = '#/'; return; }
        info = await api('GET', `/v1/sandboxes/${enc(id)}`);
        drawHead();
      })));
  };
  drawHead();
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Sandbox' },
    TABS.map((t) => h('a', { href: `#/sandbox/${enc(id)}/${t}`, 'aria-current': t === tab ? 'page' : null }, t[0].toUpperCase() + t.slice(1))));
  const meta = h('p', { class: 'muted' },
    `${info.id} · template ${info.template} · ${info.isolation || 'namespace'} · network ${info.network} · created ${when(info.created_at)}`);
  mount(head, meta, tabs, body);
  every(3000, async () => {
    const now = await api('GET', `/v1/sandboxes/${enc(id)}`);
    if (now.state !== info.state) { info = now; drawHead(); } else info = now;
  });
  const views = { terminal: terminalTab, files: filesTab, processes: processesTab, events: eventsTab, ports: portsTab, usage: usageTab };
  await views[tab](id, body, () => info);
}

// ----- terminal -----

function wsUrl(path) {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;
}

/**
 * A terminal on `el` over a terminal WebSocket. `connect(rows, cols)` gives the URL of
 * a (re)connection; text notices come to `onNotice`. Reconnects while `shouldReconnect()`.
 */
function attachTerminal(el, { connect, readOnly = false, onNotice = () => {}, onState = () => {}, shouldReconnect = () => false }) {
  const term = new Terminal({
    cursorBlink: !readOnly, disableStdin: readOnly, scrollback: 5000, fontSize: 14,
    fontFamily: '"DejaVu Sans Mono", monospace', theme: { background: '#111111' },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  // An element not laid out yet (or being taken off the page) measures nothing, and
  // fitting it would tell the program a two-column terminal: its redraw for that width
  // would then wipe lines of the real screen.
  const laidOut = () => el.clientWidth >= 40 && el.clientHeight >= 20;
  const fitNow = () => { if (laidOut()) { try { fit.fit(); } catch { /* hidden */ } } };
  const plausible = ({ rows, cols }) => rows >= 2 && cols >= 10;
  fitNow();
  let ws = null, ended = false, closed = false, writable = !readOnly, retry = 0;
  const encoder = new TextEncoder();
  const send = (data) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(data); };
  term.onData((d) => { if (writable) send(encoder.encode(d)); });
  term.onBinary((d) => { if (writable) send(Uint8Array.from(d, (c) => c.charCodeAt(0))); });
  term.onResize(({ rows, cols }) => { if (writable && plausible({ rows, cols })) send(JSON.stringify({ resize: { rows, cols } })); });
  // Copy and paste: Ctrl+Shift+C / Ctrl+Shift+V (Ctrl+C stays the terminal's). The
  // browser's own paste (Ctrl+Shift+V, Ctrl+V, the menu) reaches xterm.js as a paste
  // event, so only the key itself is kept from the terminal here.
  term.attachCustomKeyEventHandler((ev) => {
    if (ev.type !== 'keydown' || !ev.ctrlKey || !ev.shiftKey) return true;
    if (ev.code === 'KeyC') { ev.preventDefault(); navigator.clipboard?.writeText(term.getSelection()); return false; }
    if (ev.code === 'KeyV') return false;
    if (ev.code === 'KeyX') { ev.preventDefault(); term.blur(); el.closest('main')?.querySelector('.term-bar button, h1')?.focus(); return false; }
    return true;
  });
  const open = (first) => {
    const size = plausible(term) ? term : { rows: 24, cols: 80 };
    const url = connect(size.rows, size.cols, first);
    if (!url) return;
    ws = new WebSocket(wsUrl(url));
    ws.binaryType = 'arraybuffer';
    onState(first ? 'connecting' : 'reconnecting');
    ws.onopen = () => { retry = 0; onState('connected'); };
    ws.onmessage = (ev) => {
      if (typeof ev.data !== 'string') { term.write(new Uint8Array(ev.data)); return; }
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg.exit) {
        ended = true;
        const x = msg.exit;
        term.write(`\r\n[exited${x.exit_code !== null ? ` with code ${x.exit_code}` : ''}${x.signal ? ` by signal ${x.signal}` : ''}${x.oom_killed ? ', out of memory' : ''}]\r\n`);
        onState('ended');
      }
      if (msg.share) {
        writable = msg.share.write;
        term.options.disableStdin = !writable;
        term.options.cursorBlink = writable;
      }
      onNotice(msg);
    };
    ws.onclose = () => {
      if (closed || ended) return;
      if (!shouldReconnect()) { onState('disconnected'); return; }
      onState('reconnecting');
      const wait = Math.min(5000, 500 * 2 ** retry++);
      setTimeout(() => { if (!closed && !ended) { term.reset(); open(false); } }, wait);
    };
  };
  const ro = new ResizeObserver(fitNow);
  ro.observe(el);
  open(true);
  const api_ = {
    term,
    focus: () => term.focus(),
    close: () => { closed = true; ro.disconnect(); if (ws) ws.close(); term.dispose(); },
    get ended() { return ended; },
  };
  cleanups.push(api_.close);
  return api_;
}

async function terminalTab(id, body, info) {
  const stateEl = h('span', { class: 'term-state', id: 'term-state' }, '');
  const wrap = h('div', { class: 'term-wrap', id: 'terminal' });
  const shareOut = h('div', { id: 'share-out' });
  const sharesEl = h('div', { id: 'shares' });
  const storeKey = `warren.terminal.${id}`;
  let pid = Number(sessionStorage.getItem(storeKey)) || null;
  if (info().state !== 'running' && !info().auto_resume) {
    body.replaceChildren(h('p', { class: 'empty' }, `The sandbox is ${info().state}: resume or start it to open a terminal.`));
    return;
  }
  if (pid) {
    // Join the terminal this tab had, if it still runs.
    const procs = await api('GET', `/v1/sandboxes/${enc(id)}/processes`).catch(() => []);
    if (!procs.some((p) => p.pid === pid && p.tty && !p.exit)) pid = null;
  }
  const drawShares = async () => {
    const list = await api('GET', `/v1/sandboxes/${enc(id)}/shares`).catch(() => []);
    sharesEl.replaceChildren(list.length ? table([['Share'], ['Process', 'num'], ['Access'], ['Made'], ['']],
      list.map((s) => [h('span', { class: 'mono' }, s.id), String(s.pid), s.write ? 'read-write' : 'read-only', when(s.created_at),
        act('Revoke', async () => { await api('DELETE', `/v1/sandboxes/${enc(id)}/shares/${enc(s.id)}`); await drawShares(); })]), { cards: true }) : '');
  };
  const share = (write) => act(write ? 'Share read-write' : 'Share read-only', async () => {
    if (!pid) throw new Error('the terminal has not started yet');
    const s = await api('POST', `/v1/sandboxes/${enc(id)}/processes/${pid}/share`, { json: { write, screen: true } });
    const link = `${location.origin}/console/#/shared/${s.token}`;
    const input = h('input', { class: 'share-link mono', readonly: true, value: link, id: write ? 'share-rw' : 'share-ro', 'aria-label': 'Share link' });
    shareOut.replaceChildren(h('div', { class: 'row' }, h('span', {}, write ? 'Read-write link:' : 'Read-only link:'), input,
      act('Copy link', async () => { await navigator.clipboard.writeText(link); say('link copied', 'ok'); })));
    input.select();
    await drawShares();
  }, { id: write ? 'share-write' : 'share-read' });
  let t;
  const startNew = () => {
    sessionStorage.removeItem(storeKey);
    pid = null;
    if (t) t.close();
    t = start();
    t.focus();
  };
  const start = () => attachTerminal(wrap, {
    connect: (rows, cols) => pid
      ? `/v1/sandboxes/${enc(id)}/pty?pid=${pid}&rows=${rows}&cols=${cols}`
      : `/v1/sandboxes/${enc(id)}/pty?keep=true&rows=${rows}&cols=${cols}`,
    shouldReconnect: () => !!pid,
    onState: (s) => {
      stateEl.textContent = s;
      if (s === 'ended') sessionStorage.removeItem(storeKey);
    },
    onNotice: (msg) => {
      if (msg.process) { pid = msg.process.pid; sessionStorage.setItem(storeKey, String(pid)); }
      if (msg.error) say(`${msg.error.message} (${msg.error.code})`, 'error');
    },
  });
  body.replaceChildren(
    h('div', { class: 'term-bar' },
      stateEl, h('span', { class: 'spacer' }),
      share(false), share(true),
      act('New terminal', async () => startNew()),
      act('End terminal', async () => {
        if (pid) await api('POST', `/v1/sandboxes/${enc(id)}/processes/${pid}/signal`, { json: { signal: 1 } }).catch(() => {});
      })),
    h('p', { class: 'muted' }, 'Copy: Ctrl+Shift+C · Paste: Ctrl+Shift+V · Back to the page from the terminal: Ctrl+Shift+X'),
    wrap, shareOut, sharesEl);
  t = start();
  t.focus();
  await drawShares();
}

// ----- files -----

async function filesTab(id, body) {
  const base = `/v1/sandboxes/${enc(id)}/files`;
  let path = sessionStorage.getItem(`warren.path.${id}`) || '/';
  try {
    if (path === '/') { const home = await api('GET', `${base}/stat?path=${enc('/home/user')}`); if (home.type === 'dir') path = '/home/user'; }
  } catch { /* no home */ }
  const crumbs = h('div', { class: 'crumbs', 'aria-label': 'Path' });
  const listing = h('div', { id: 'file-list' });
  const editor = h('div', { class: 'editor' });
  const upload = h('input', { type: 'file', multiple: true, id: 'upload', 'aria-label': 'Upload files' });
  const join = (dir, name) => (dir.endsWith('/') ? dir + name : `${dir}/${name}`);
  const go = async (p) => { path = p; sessionStorage.setItem(`warren.path.${id}`, p); editor.replaceChildren(); await draw(); };
  const download = async (f) => {
    const r = await api('GET', `${base}?path=${enc(f.path)}`, { raw: true });
    const blob = await r.blob();
    const a = h('a', { href: URL.createObjectURL(blob), download: f.name });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  };
  const edit = async (f) => {
    const r = await api('GET', `${base}?path=${enc(f.path)}`, { raw: true });
    const text = await r.text();
    const area = h('textarea', { id: 'editor-text', 'aria-label': `Contents of ${f.path}`, spellcheck: 'false' });
    area.value = text;
    editor.replaceChildren(h('div', { class: 'panel' },
      h('h2', {}, `Edit ${f.path}`), area,
      h('div', { class: 'actions', style: 'margin-top:8px' },
        act('Save', async () => {
          await api('PUT', `${base}?path=${enc(f.path)}&mode=${(f.mode & 0o7777).toString(8)}`, { body: area.value, headers: { 'Content-Type': 'application/octet-stream' } });
          say(`${f.path} saved`, 'ok');
          await draw();
        }, { class: 'primary', id: 'editor-save' }),
        act('Close', async () => editor.replaceChildren()))));
    area.focus();
  };
  const draw = async () => {
    const parts = path.split('/').filter(Boolean);
    crumbs.replaceChildren(h('button', { type: 'button', onclick: () => go('/') }, '/'),
      ...parts.map((p, i) => [h('button', { type: 'button', onclick: () => go(`/${parts.slice(0, i + 1).join('/')}`) }, p), '/']).flat());
    let entries;
    try { entries = await api('GET', `${base}/list?path=${enc(path)}&depth=1`); } catch (e) { failed(e); entries = []; }
    entries.sort((a, b) => ((b.type === 'dir') - (a.type === 'dir')) || a.name.localeCompare(b.name));
    const rows = entries.map((f) => [
      f.type === 'dir'
        ? h('button', { type: 'button', class: 'linkish', onclick: () => go(f.path) }, `${f.name}/`)
        : h('span', { class: 'mono' }, f.name, f.symlink_target ? ` → ${f.symlink_target}` : ''),
      f.type, f.type === 'file' ? bytes(f.size) : '', (f.mode & 0o7777).toString(8),
      f.modified ? new Date(f.modified * 1000).toLocaleString() : '',
      h('div', { class: 'actions' },
        f.type === 'file' ? act('Download', () => download(f), { 'aria-label': `Download ${f.name}` }) : null,
        f.type === 'file' && f.size <= 1 << 20 ? act('Edit', () => edit(f), { 'aria-label': `Edit ${f.name}` }) : null,
        act('Delete', async () => {
          if (!confirm(`Delete ${f.path}?`)) return;
          await api('DELETE', `${base}?path=${enc(f.path)}${f.type === 'dir' ? '&recursive=true' : ''}`);
          await draw();
        }, { class: 'danger', 'aria-label': `Delete ${f.name}` })),
    ]);
    listing.replaceChildren(table([['Name'], ['Type'], ['Size', 'num'], ['Mode'], ['Modified'], ['']], rows, { empty: 'Empty directory.' }));
  };
  upload.addEventListener('change', async () => {
    try {
      for (const file of upload.files) {
        await api('PUT', `${base}?path=${enc(join(path, file.name))}`, { body: file, headers: { 'Content-Type': 'application/octet-stream' } });
        say(`${file.name} uploaded`, 'ok');
      }
    } catch (e) { failed(e); }
    upload.value = '';
    await draw();
  });
  body.replaceChildren(
    h('div', { class: 'row', style: 'margin-bottom:10px' }, crumbs, h('span', { class: 'spacer' }),
      h('label', { for: 'upload' }, 'Upload here', upload),
      act('New folder', async () => {
        const name = prompt('Folder name');
        if (!name) return;
        await api('POST', `${base}/mkdir?path=${enc(join(path, name))}`);
        await draw();
      }),
      act('New file', async () => {
        const name = prompt('File name');
        if (!name) return;
        await api('PUT', `${base}?path=${enc(join(path, name))}`, { body: '', headers: { 'Content-Type': 'application/octet-stream' } });
        await draw();
      }),
      act('Refresh', draw)),
    listing, editor);
  await draw();
}

// ----- processes, events, ports, usage -----

function commandText(c) {
  if (!c) return '';
  if (c.shell !== undefined) return c.shell;
  if (c.argv) return c.argv.join(' ');
  return JSON.stringify(c);
}

async function processesTab(id, body) {
  const el = h('div', { id: 'process-list' });
  body.replaceChildren(el);
  every(2000, async () => {
    const procs = await api('GET', `/v1/sandboxes/${enc(id)}/processes`);
    el.replaceChildren(table([['PID', 'num'], ['Command'], ['Terminal'], ['Background'], ['Status'], ['']],
      procs.map((p) => [String(p.pid), h('span', { class: 'mono' }, commandText(p.command)), p.tty ? 'yes' : '', p.background ? 'yes' : '',
        p.exit ? `exited ${p.exit.code ?? `signal ${p.exit.signal}`}` : 'running',
        h('div', { class: 'actions' },
          p.tty && !p.exit ? act('Open terminal', async () => {
            sessionStorage.setItem(`warren.terminal.${id}`, String(p.pid));
            location.hash = `#/sandbox/${enc(id)}/terminal`;
          }) : null,
          !p.exit ? act('Kill', async () => { await api('POST', `/v1/sandboxes/${enc(id)}/processes/${p.pid}/signal`, { json: { signal: 9 } }); }, { class: 'danger' }) : null)]),
      { empty: 'No processes started through Warren.' }));
  });
}

async function eventsTab(id, body) {
  const el = h('div', { id: 'event-list' });
  body.replaceChildren(el);
  every(5000, async () => {
    const events = await api('GET', `/v1/sandboxes/${enc(id)}/logs`);
    el.replaceChildren(table([['Time'], ['Event'], ['Message']],
      events.slice().reverse().map((e) => [when(e.time), e.kind, e.message]), { empty: 'No events.' }));
  });
}

/** Opens `port` of sandbox `id` in a new tab, through the daemon (a one-time port link). */
async function openPort(id, port) {
  const link = await api('POST', `/v1/sandboxes/${enc(id)}/ports/${port}/link`);
  if (!link.url) {
    throw new Error(`Open the console by a host name (for example http://localhost:${location.port || 80}/ on this host) to open a port: ${location.hostname} has no names under it.`);
  }
  window.open(link.url, '_blank', 'noopener,noreferrer');
}

async function portsTab(id, body, info) {
  const s = info();
  const rows = (s.publish || []).map((p) => {
    const url = `http://${location.hostname}:${p.host}/`;
    return [String(p.sandbox), String(p.host), h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, url),
      act('Open through Warren', () => openPort(id, p.sandbox), { 'aria-label': `Open port ${p.sandbox} through Warren` })];
  });
  const port = h('input', { id: 'open-port', size: 6, inputmode: 'numeric', required: true, placeholder: '8888', 'aria-describedby': 'open-port-help' });
  const form = h('form', { class: 'panel', 'aria-label': 'Open a port in the browser', id: 'open-port-form' },
    h('h2', {}, 'Open a port in the browser'),
    h('div', { class: 'row' }, field('Sandbox port', port), h('button', { type: 'submit', class: 'primary', id: 'open-port-go' }, 'Open')),
    h('p', { class: 'muted note', id: 'open-port-help' },
      `A web server inside the sandbox (JupyterLab on 8888, an editor, a preview) opens in a new tab on a host of its own, PORT-${s.id}.${location.hostname === '127.0.0.1' || location.hostname === '[::1]' ? 'localhost' : location.hostname}, through this daemon. The link is good once, for a minute; the tab keeps its access for 12 hours. Nobody without such a link (or the sandbox's traffic token) gets in there.`));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    try { await openPort(id, parseCount(port.value, 'Sandbox port', 1)); } catch (e) { failed(e); }
  });
  body.replaceChildren(
    form,
    table([['Sandbox port', 'num'], ['Host port', 'num'], ['URL'], ['']], rows, { empty: 'No published ports. Publish one when creating the sandbox (warren create -p HOST:PORT).' }),
    h('p', { class: 'muted' }, 'Published ports listen on the daemon\'s host loopback; the URL works from a browser on that host or through a tunnel to it.'));
}

function chart(title, samples, value, fmt) {
  const w = 300, ht = 120;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${w} ${ht}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${title} over the last ${samples.length} readings`);
  const add = (tag, attrs) => { const e = document.createElementNS('http://www.w3.org/2000/svg', tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); svg.append(e); };
  add('line', { x1: 0, y1: ht - 1, x2: w, y2: ht - 1, class: 'axis' });
  const vals = samples.map(value);
  const max = Math.max(1e-9, ...vals);
  if (vals.length > 1) {
    const pts = vals.map((v, i) => [(i / (vals.length - 1)) * w, ht - 4 - (v / max) * (ht - 12)]);
    const line = pts.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(' ');
    add('polygon', { points: `0,${ht} ${line} ${w},${ht}`, class: 'area' });
    add('polyline', { points: line, class: 'line' });
  }
  const now = vals.length ? fmt(vals[vals.length - 1]) : '—';
  return h('div', { class: 'panel chart' }, h('h3', {}, h('span', {}, title), h('span', { class: 'muted' }, `now ${now} · peak ${vals.length ? fmt(max) : '—'}`)), svg);
}

async function usageTab(id, body) {
  const el = h('div', { class: 'charts', id: 'charts' });
  body.replaceChildren(el, h('p', { class: 'muted' }, 'A reading every 5 seconds while the sandbox runs; the last half hour.'));
  every(5000, async () => {
    const samples = await api('GET', `/v1/sandboxes/${enc(id)}/metrics`);
    el.replaceChildren(
      chart('CPU', samples, (s) => s.cpu_pct, (v) => `${v.toFixed(1)}%`),
      chart('Memory', samples, (s) => s.memory_bytes, bytes),
      chart('Disk', samples, (s) => s.disk_bytes, bytes));
  });
}

// ---------- templates and pools ----------

function field(label, el) { return h('label', { for: el.id }, label, el); }

/** The backends a request may name here, as options after `first`. */
function backendOptions(backends, first) {
  return [first, ...backends.filter((b) => b.available).map((b) => h('option', { value: b.name }, b.name))];
}

/** A build's steps from the steps' text: one command a line; blank lines and `#` comments skipped. */
function stepsOf(text) {
  return text.split('\n').map((s) => s.trim()).filter((s) => s && !s.startsWith('#'));
}

/** The text of a recipe file: the steps as the form takes them, one command a line. */
async function readRecipe(file) {
  if (file.size > 1024 * 1024) throw new Error(`${file.name}: a recipe is at most 1 MiB`);
  const text = await file.text();
  if (text.includes('\0')) throw new Error(`${file.name} is not a text file`);
  return text.replace(/\r\n/g, '\n');
}

async function templatesView() {
  const list = h('div', { id: 'template-list' });
  const log = h('pre', { class: 'log', id: 'build-log', hidden: true });
  const progress = h('progress', { id: 'build-progress', hidden: true, max: 1, value: 0 });
  const draw = async () => {
    const templates = await api('GET', '/v1/templates');
    list.replaceChildren(table([['Name'], ['Kind'], ['From'], ['Size', 'num'], ['Used by', 'num'], ['Made'], ['']],
      templates.map((t) => [h('span', { class: 'mono' }, t.name), t.kind, t.source || '', bytes(t.size_bytes), String(t.used_by.length), t.created_at ? new Date(t.created_at).toLocaleString() : '',
        t.kind === 'builtin' ? '' : act('Remove', async () => {
          if (!confirm(`Remove template ${t.name}?`)) return;
          await api('DELETE', `/v1/templates/${enc(t.name)}`);
          await draw();
        }, { class: 'danger', 'aria-label': `Remove ${t.name}` })]), { empty: 'No templates.' }));
    return templates;
  };
  const [templates, backends] = await Promise.all([draw(), api('GET', '/v1/backends').catch(() => [])]);
  const f = {
    name: h('input', { id: 'build-name', required: true, size: 14 }),
    from: h('select', { id: 'build-from' }, templates.map((t) => h('option', { value: t.name }, t.name))),
    recipe: h('input', { type: 'file', id: 'build-recipe', accept: '.txt,.sh,.recipe,text/plain', 'aria-describedby': 'build-recipe-note' }),
    steps: h('textarea', { id: 'build-steps', rows: 5, placeholder: 'one shell command per line, run as root in order' }),
    start: h('input', { id: 'build-start', size: 24, placeholder: 'optional' }),
    ready: h('input', { id: 'build-ready', size: 24, placeholder: 'optional', 'aria-describedby': 'build-help' }),
    readyTimeout: h('input', { id: 'build-ready-timeout', size: 6, inputmode: 'numeric', placeholder: '60', 'aria-describedby': 'build-help' }),
    isolation: h('select', { id: 'build-isolation', 'aria-describedby': 'build-help' },
      backendOptions(backends, h('option', { value: '' }, 'the daemon\'s'))),
    network: h('input', { type: 'checkbox', id: 'build-network' }),
  };
  const recipeNote = h('span', { id: 'build-recipe-note', class: 'muted note', 'aria-live': 'polite' },
    'A text file of steps, one shell command a line (# comments and blank lines skipped): it replaces the steps below, which you may still edit.');
  f.recipe.addEventListener('change', async () => {
    const file = f.recipe.files[0];
    if (!file) return;
    try {
      f.steps.value = await readRecipe(file);
      const n = stepsOf(f.steps.value).length;
      recipeNote.textContent = `${n} step${n === 1 ? '' : 's'} from ${file.name}, below; edit them or build.`;
    } catch (e) { failed(e); }
  });
  const form = h('form', { class: 'panel', 'aria-label': 'Build a template' },
    h('h2', {}, 'Build a template'),
    h('div', { class: 'row' },
      field('Name', f.name), field('From', f.from),
      h('label', { class: 'check', for: 'build-network' }, f.network, 'Network for the steps')),
    h('div', { class: 'row', style: 'margin-top:8px' },
      field('Start command', f.start), field('Ready command', f.ready), field('Ready timeout (s)', f.readyTimeout),
      field('Isolation', f.isolation)),
    h('p', { class: 'muted note', id: 'build-help' },
      'The start command runs in the background whenever a sandbox of the template starts; the ready command is run until it succeeds (within the timeout) before the sandbox counts as running. Isolation is the backend its sandboxes get when a request names none.'),
    h('div', { class: 'row', style: 'margin:10px 0' }, field('Recipe file', f.recipe), recipeNote),
    field('Steps', f.steps),
    h('div', { class: 'row', style: 'margin-top:8px' }, h('button', { type: 'submit', class: 'primary', id: 'build-go' }, 'Build')),
    progress, log);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    log.hidden = false; progress.hidden = false; progress.removeAttribute('value');
    log.textContent = '';
    const append = (s) => { log.textContent += s; log.scrollTop = log.scrollHeight; };
    try {
      const req = { name: f.name.value, from: f.from.value, steps: stepsOf(f.steps.value), network: f.network.checked };
      if (f.start.value) req.start_cmd = f.start.value;
      if (f.ready.value) req.ready_cmd = f.ready.value;
      const timeout = parseCount(f.readyTimeout.value, 'Ready timeout', 1);
      if (timeout !== undefined) req.ready_timeout_secs = timeout;
      if (f.isolation.value) req.isolation = f.isolation.value;
      const r = await api('POST', '/v1/templates/build', { json: req, raw: true });
      await eachLine(r, (ev2) => {
        if (ev2.type === 'step') { progress.max = ev2.count + 1; progress.value = ev2.index; append(`\n$ ${ev2.command}\n`); }
        else if (ev2.type === 'output') append(ev2.data);
        else if (ev2.type === 'capturing') { progress.value = progress.max - 0.5; append('\ncapturing the files…\n'); }
        else if (ev2.type === 'done') { progress.value = progress.max; append(`\ndone: template ${ev2.template.name}\n`); say(`template ${ev2.template.name} built`, 'ok'); }
        else if (ev2.type === 'error') { append(`\nerror: ${ev2.message} (${ev2.code})\n`); say(ev2.message, 'error'); }
      });
      await draw();
    } catch (e) { failed(e); } finally { btn.disabled = false; }
  });
  mount(h('h1', {}, 'Templates'), h('div', { style: 'margin-bottom:16px' }, list), form, importForm(draw, backends));
}

/** Sends a `docker save` or OCI layout archive to the daemon, showing how much is sent. */
function importForm(draw, backends) {
  const f = {
    file: h('input', { type: 'file', id: 'import-file', required: true, accept: '.tar,.gz,.tgz,.zst,application/x-tar' }),
    name: h('input', { id: 'import-name', required: true, size: 14 }),
    start: h('input', { id: 'import-start', size: 24, placeholder: 'optional' }),
    ready: h('input', { id: 'import-ready', size: 24, placeholder: 'optional', 'aria-describedby': 'import-help' }),
    readyTimeout: h('input', { id: 'import-ready-timeout', size: 6, inputmode: 'numeric', placeholder: '60', 'aria-describedby': 'import-help' }),
    isolation: h('select', { id: 'import-isolation', 'aria-describedby': 'import-help' },
      backendOptions(backends, h('option', { value: '' }, 'the daemon\'s'))),
    maxSize: h('input', { id: 'import-max-size', size: 8, placeholder: 'e.g. 2G', 'aria-describedby': 'import-help' }),
    // The operator's alone to ask (the daemon refuses it from anyone else).
    setuid: session.operator ? h('input', { type: 'checkbox', id: 'import-setuid' }) : null,
  };
  const progress = h('progress', { id: 'import-progress', hidden: true, max: 1, value: 0 });
  const percent = h('span', { id: 'import-percent', class: 'muted' });
  const result = h('pre', { class: 'log', id: 'import-result', hidden: true });
  const form = h('form', { class: 'panel', 'aria-label': 'Import an image' },
    h('h2', {}, 'Import an image'),
    h('p', { class: 'muted' }, 'A docker save or OCI layout archive (.tar, or gzip or zstd of one). The template is your tenant\'s own.'),
    h('div', { class: 'row' }, field('Archive', f.file), field('Name', f.name)),
    h('div', { class: 'row', style: 'margin-top:8px' },
      field('Start command', f.start), field('Ready command', f.ready), field('Ready timeout (s)', f.readyTimeout),
      field('Isolation', f.isolation), field('Size limit', f.maxSize),
      f.setuid && h('label', { class: 'check', for: 'import-setuid' }, f.setuid, 'Keep setuid programs (sudo) working')),
    h('p', { class: 'muted note', id: 'import-help' },
      'The start command runs in the background whenever a sandbox of the template starts; the ready command is polled until it exits 0, for at most the ready timeout, before the sandbox counts as running. Isolation is the backend its sandboxes get when a request names none. The size limit bounds the archive and what its layers unpack to (8G at most).'),
    h('div', { class: 'row', style: 'margin-top:8px' }, h('button', { type: 'submit', class: 'primary', id: 'import-go' }, 'Import'), progress, percent),
    result);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const file = f.file.files[0];
    if (!file) return;
    const btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    result.hidden = true; result.textContent = '';
    try {
      const query = new URLSearchParams({ name: f.name.value });
      if (f.start.value) query.set('start_cmd', f.start.value);
      if (f.ready.value) query.set('ready_cmd', f.ready.value);
      const timeout = parseCount(f.readyTimeout.value, 'Ready timeout', 1);
      if (timeout !== undefined) query.set('ready_timeout_secs', String(timeout));
      if (f.isolation.value) query.set('isolation', f.isolation.value);
      const max = parseSize(f.maxSize.value);
      if (max !== undefined) query.set('max_bytes', String(max));
      if (f.setuid?.checked) query.set('setuid', 'true');
      progress.hidden = false; progress.max = 1; progress.value = 0;
      percent.textContent = '0%';
      const r = await upload(`/v1/templates/upload?${query}`, file, (sent, total) => {
        progress.max = total || 1; progress.value = sent;
        percent.textContent = `${total ? Math.floor((100 * sent) / total) : 100}% (${bytes(sent)} of ${bytes(total)})`;
      });
      percent.textContent = '100%';
      result.hidden = false;
      result.textContent = [...r.warnings, `template ${r.template.name}: ${r.new_layers} layer(s) stored, ${r.shared_layers} shared, ${bytes(r.template.size_bytes)}`].join('\n');
      say(`template ${r.template.name} imported`, 'ok');
      await draw();
    } catch (e) {
      // What was sent is no measure of a refused import.
      progress.hidden = true;
      percent.textContent = '';
      result.hidden = false;
      result.textContent = `error: ${e.message}${e.code ? ` (${e.code})` : ''}`;
      failed(e);
    } finally { btn.disabled = false; }
  });
  return form;
}

/** POSTs `file` as the raw body with XMLHttpRequest, whose upload reports progress (fetch's does not). */
function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open('POST', path);
    x.withCredentials = true;
    if (session.csrf) x.setRequestHeader('X-CSRF-Token', session.csrf);
    x.setRequestHeader('Content-Type', 'application/octet-stream');
    x.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size);
    x.onload = () => {
      let body = null;
      try { body = x.responseText ? JSON.parse(x.responseText) : null; } catch { body = null; }
      if (x.status >= 200 && x.status < 300) { onProgress(file.size, file.size); resolve(body); return; }
      if (x.status === 401) { session.tenant = null; location.hash = '#/signin'; }
      reject(new ApiError(x.status, body?.code || '', body?.message || `HTTP ${x.status}`));
    };
    x.onerror = () => reject(new ApiError(0, '', 'the upload broke off'));
    x.send(file);
  });
}

function poolProfile(spec) {
  const r = spec.resources || {};
  return [
    r.memory != null ? bytes(r.memory) : null,
    r.cpu_millis != null ? `${r.cpu_millis / 1000} CPU` : null,
    r.pids != null ? `${r.pids} processes` : null,
    r.disk != null ? `${bytes(r.disk)} disk` : null,
  ].filter(Boolean).join(' · ') || 'the daemon\'s defaults';
}

async function poolsView() {
  if (!session.operator) {
    mount(h('h1', {}, 'Warm pools'), h('p', { class: 'empty' }, 'Pools are the host operator\'s: sign in with an operator key to see and set them.'));
    return;
  }
  const [templates, backends] = await Promise.all([
    api('GET', '/v1/templates').catch(() => []),
    api('GET', '/v1/backends').catch(() => []),
  ]);
  const el = h('div', { id: 'pool-list' });
  const f = {
    template: h('select', { id: 'pool-template' }, templates.filter((t) => !t.private).map((t) => h('option', { value: t.name }, t.name))),
    min: h('input', { id: 'pool-min', required: true, size: 5, inputmode: 'numeric', placeholder: 'e.g. 2' }),
    max: h('input', { id: 'pool-max', size: 5, inputmode: 'numeric', placeholder: 'same' }),
    isolation: h('select', { id: 'pool-isolation' }, backendOptions(backends.filter((b) => b.name !== 'namespace'), h('option', { value: 'namespace' }, 'namespace'))),
    network: h('select', { id: 'pool-network' }, h('option', { value: 'none' }, 'none'), h('option', { value: 'nat' }, 'nat')),
    memory: h('input', { id: 'pool-memory', placeholder: 'default', size: 8 }),
    cpus: h('input', { id: 'pool-cpus', placeholder: 'default', size: 6, inputmode: 'decimal' }),
    pids: h('input', { id: 'pool-pids', placeholder: 'default', size: 6, inputmode: 'numeric' }),
    disk: h('input', { id: 'pool-disk', placeholder: 'default', size: 8 }),
    ttl: h('input', { id: 'pool-ttl', placeholder: 'never', size: 7, inputmode: 'numeric' }),
  };
  const form = h('form', { class: 'panel', id: 'pool-form', 'aria-label': 'Set a pool' },
    h('h2', {}, 'Set a pool'),
    h('p', { class: 'muted note' }, 'A pool keeps sandboxes of one template and profile (backend, network, limits) made ahead: a create that asks for exactly that profile, with no home volume, environment or published ports, gets one at once. Setting a profile again changes its pool; "At most" empty means as many as kept ready.'),
    h('div', { class: 'row' },
      field('Template', f.template), field('Kept ready', f.min), field('At most', f.max),
      field('Isolation', f.isolation), field('Network', f.network),
      field('Memory', f.memory), field('CPUs', f.cpus), field('Processes', f.pids), field('Disk', f.disk),
      field('Replace after (s)', f.ttl),
      h('button', { type: 'submit', class: 'primary', id: 'pool-set' }, 'Set pool')));
  const fill = (spec) => {
    // A pool may name what this form does not offer (a backend not available now).
    const choose = (select, value) => {
      if (![...select.options].some((o) => o.value === value)) select.append(h('option', { value }, value));
      select.value = value;
    };
    const r = spec.resources || {};
    choose(f.template, spec.template);
    choose(f.isolation, spec.isolation);
    choose(f.network, spec.network);
    f.min.value = String(spec.min);
    f.max.value = String(spec.max);
    f.memory.value = sizeText(r.memory);
    f.cpus.value = r.cpu_millis != null ? String(r.cpu_millis / 1000) : '';
    f.pids.value = r.pids != null ? String(r.pids) : '';
    f.disk.value = sizeText(r.disk);
    f.ttl.value = spec.ttl_secs != null ? String(spec.ttl_secs) : '';
    f.min.focus();
    f.min.select();
  };
  let shown = '';
  const refresh = async () => {
    const pools = await api('GET', '/v1/pools');
    const now = JSON.stringify(pools);
    if (now === shown) return; // Unchanged: keep the rows, and the focus on them.
    shown = now;
    const focused = el.contains(document.activeElement) ? document.activeElement.id : null;
    el.replaceChildren(table([['Template'], ['Backend'], ['Network'], ['Limits'], ['Fill'], ['Min', 'num'], ['Max', 'num'], ['Hits', 'num'], ['Misses', 'num'], ['']],
      pools.map((p, i) => [p.spec.template, p.spec.isolation || 'namespace', p.spec.network, poolProfile(p.spec),
        h('div', { class: 'fill' }, h('progress', { max: Math.max(1, p.spec.min), value: p.ready, 'aria-label': `${p.ready} of ${p.spec.min} ready` }), `${p.ready}/${p.spec.min}`),
        String(p.spec.min), String(p.spec.max), String(p.hits), String(p.misses),
        h('div', { class: 'actions' },
          act('Change', async () => fill(p.spec), { id: `pool-change-${i}`, 'aria-label': `Change the pool of ${p.spec.template} (${p.spec.isolation}, ${p.spec.network})` }),
          act('Remove', async () => {
            if (!confirm(`Remove the pool of ${p.spec.template}? Its ${p.ready} warm sandbox(es) end.`)) return;
            await api('POST', '/v1/pools', { json: { ...p.spec, min: 0, max: 0 } });
            say(`the pool of ${p.spec.template} is removed`, 'ok');
            await refresh();
          }, { class: 'danger', id: `pool-remove-${i}`, 'aria-label': `Remove the pool of ${p.spec.template} (${p.spec.isolation}, ${p.spec.network})` }))]),
      { empty: 'No pools. Set one below.' }));
    if (focused) document.getElementById(focused)?.focus();
  };
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const btn = form.querySelector('button[type=submit]');
    btn.disabled = true;
    try {
      const min = parseCount(f.min.value, 'Kept ready', 0);
      if (min === undefined) throw new Error('Kept ready: say how many sandboxes to keep ready');
      const spec = {
        template: f.template.value,
        isolation: f.isolation.value,
        network: f.network.value,
        min,
        max: parseCount(f.max.value, 'At most', 0) ?? min,
        resources: {},
      };
      if (f.memory.value) spec.resources.memory = parseSize(f.memory.value);
      if (f.disk.value) spec.resources.disk = parseSize(f.disk.value);
      if (f.cpus.value) spec.resources.cpu_millis = Math.round(parseFloat(f.cpus.value) * 1000);
      if (f.pids.value) spec.resources.pids = parseCount(f.pids.value, 'Processes', 1);
      const ttl = parseCount(f.ttl.value, 'Replace after', 1);
      if (ttl !== undefined) spec.ttl_secs = ttl;
      await api('POST', '/v1/pools', { json: spec });
      say(spec.max === 0 ? `the pool of ${spec.template} is removed` : `the pool of ${spec.template} keeps ${spec.min} ready`, 'ok');
      shown = '';
      await refresh();
    } catch (e) { failed(e); } finally { btn.disabled = false; }
  });
  mount(h('h1', {}, 'Warm pools'), h('div', { style: 'margin-bottom:16px' }, el), form);
  every(2000, refresh);
}

// ---------- a shared terminal (no sign-in: the link's token is the credential) ----------

function sharedView(token) {
  const note = h('p', { id: 'share-mode', class: 'banner' }, 'Joining…');
  const wrap = h('div', { class: 'term-wrap', id: 'terminal' });
  mount(h('h1', {}, 'Shared terminal'), note, wrap);
  let joined = false;
  const t = attachTerminal(wrap, {
    readOnly: true,
    connect: (rows, cols, first) => (first || joined ? `/v1/shared/${enc(token)}` : null),
    shouldReconnect: () => joined,
    onState: (s) => { if (s === 'disconnected') note.textContent = 'The share ended (revoked, or its process or sandbox ended).'; },
    onNotice: (msg) => {
      if (msg.share) {
        joined = true;
        note.textContent = msg.share.write ? 'Read-write: your keys reach the terminal.' : 'Read-only: you can watch, not type.';
        if (msg.share.write) t.focus();
      }
      if (msg.error && msg.error.code !== 'read_only') note.textContent = msg.error.message;
    },
  });
}

// ---------- routing ----------

async function route() {
  for (const c of cleanups.splice(0)) { try { c(); } catch { /* already gone */ } }
  const hash = location.hash.replace(/^#/, '') || '/';
  const parts = hash.split('/').filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll('[data-nav]').forEach((a) => a.removeAttribute('aria-current'));
  const current = (name) => document.querySelector(`[data-nav="${name}"]`)?.setAttribute('aria-current', 'page');
  try {
    if (parts[0] === 'shared' && parts[1]) return sharedView(parts[1]);
    if (!session.tenant) await whoami();
    if (!session.tenant || parts[0] === 'signin') {
      if (session.tenant && parts[0] === 'signin') { location.hash = '#/'; return; }
      return signInView();
    }
    if (parts[0] === 'sandbox' && parts[1]) { current('sandboxes'); return await sandboxView(parts[1], parts[2]); }
    if (parts[0] === 'templates') { current('templates'); return await templatesView(); }
    if (parts[0] === 'pools') { current('pools'); return await poolsView(); }
    current('sandboxes');
    return await sandboxesView();
  } catch (e) {
    failed(e);
    if (e instanceof ApiError && e.status === 404) mount(h('p', { class: 'empty' }, e.message), h('a', { href: '#/' }, 'Back to the sandboxes'));
  }
}

document.getElementById('sign-out').addEventListener('click', async () => {
  await api('DELETE', '/console/session').catch(() => {});
  Object.assign(session, { tenant: null, operator: false, csrf: null });
  showChrome();
  location.hash = '#/signin';
});
window.addEventListener('hashchange', route);
route();
