// The web console in a real browser: Debian's chromium, driven by playwright-core,
// against a live `warren serve --listen` of its own (own run and data directories).
// Screenshots of each page go to $WARREN_CONSOLE_SHOTS (default target/console-shots).
// Prints one line per test and a summary line `N passed, M failed`.
import { chromium } from 'playwright-core';
import { spawn, execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(new URL('../..', import.meta.url).pathname);
const WARREN = process.env.WARREN_BIN || join(ROOT, 'target', 'debug', 'warren');
const SHOTS = process.env.WARREN_CONSOLE_SHOTS || join(ROOT, 'target', 'console-shots');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  return new Promise((res) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
  });
}

async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try { const v = await fn(); if (v) return v; } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await sleep(100);
  }
}

function assert(cond, message) { if (!cond) throw new Error(message); }

/** A daemon of the test's own. */
class Daemon {
  async start() {
    this.dir = mkdtempSync(join(tmpdir(), 'wconsole-'));
    this.env = { ...process.env, WARREN_RUN_DIR: join(this.dir, 'run'), WARREN_DATA_DIR: join(this.dir, 'data') };
    this.port = await freePort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.proc = spawn(WARREN, ['serve', '--listen', `127.0.0.1:${this.port}`], {
      env: this.env, stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.log = '';
    this.proc.stderr.on('data', (d) => { this.log += d; });
    await until('the daemon', async () => (await fetch(`${this.url}/health`)).ok, 30000);
    this.alice = this.cli('keys', 'create', '--tenant', 'alice').trim();
    this.bob = this.cli('keys', 'create', '--tenant', 'bob').trim();
    this.operator = this.cli('keys', 'create', '--tenant', 'ops', '--operator').trim();
  }

  cli(...args) { return execFileSync(WARREN, args, { env: this.env, encoding: 'utf8' }); }

  /** A long CLI call, the event loop running meanwhile (kept-alive connections stay sound). */
  cliLong(...args) {
    return new Promise((res, rej) => execFile(WARREN, args, { env: this.env, encoding: 'utf8', maxBuffer: 1 << 26 }, (e, out, err) => (e ? rej(new Error(`warren ${args.join(' ')}: ${err || e.message}`)) : res(out))));
  }

  async api(key, method, path, body) {
    const r = await fetch(this.url + path, {
      method,
      headers: { Authorization: `Bearer ${key}`, ...(body !== undefined ? { 'Content-Type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
    const text = await r.text();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** Starts `shell` in the background in sandbox `id`; its pid. */
  async background(key, id, shell) {
    const ac = new AbortController();
    const r = await fetch(`${this.url}/v1/sandboxes/${id}/exec?stream=true`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ command: { shell }, background: true }),
      signal: ac.signal,
    });
    if (!r.ok) throw new Error(`exec: ${r.status} ${await r.text()}`);
    const reader = r.body.getReader();
    let text = '';
    while (!text.includes('\n')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += new TextDecoder().decode(value);
    }
    ac.abort();
    const started = JSON.parse(text.split('\n')[0]);
    if (started.type !== 'started') throw new Error(`exec: ${text}`);
    return started.pid;
  }

  /** A request on the unix socket (the host's root). */
  unix(method, path, body) {
    const args = ['-s', '--unix-socket', join(this.dir, 'run', 'warren.sock'), '-X', method, `http://warren${path}`];
    if (body !== undefined) args.push('-H', 'Content-Type: application/json', '-d', JSON.stringify(body));
    return execFileSync('curl', args, { encoding: 'utf8' });
  }

  async stop() {
    for (const key of [this.alice, this.bob]) {
      for (const s of await this.api(key, 'GET', '/v1/sandboxes').catch(() => [])) {
        await this.api(key, 'DELETE', `/v1/sandboxes/${s.id}`).catch(() => {});
      }
    }
    this.unix('POST', '/v1/pools', { template: 'host', min: 0, max: 0 });
    this.proc.kill('SIGTERM');
    await new Promise((r) => (this.proc.exitCode !== null ? r() : this.proc.on('exit', r)));
    let doctor = '';
    try { execFileSync(WARREN, ['doctor'], { env: this.env, encoding: 'utf8' }); } catch (e) { doctor = `${e.stdout}${e.stderr}`; }
    rmSync(this.dir, { recursive: true, force: true });
    assert(!doctor, `warren doctor found leftovers:\n${doctor}`);
  }
}

/** Raw HTTP, for headers fetch will not let a test set (Cookie, Origin). */
function raw(url, { method = 'GET', headers = {}, body } = {}) {
  return new Promise((res, rej) => {
    const req = request(url, { method, headers }, (r) => {
      let data = '';
      r.on('data', (d) => { data += d; });
      r.on('end', () => res({ status: r.statusCode, headers: r.headers, body: data }));
    });
    req.on('error', rej);
    if (body) req.write(body);
    req.end();
  });
}

const screen = (page) => page.locator('#terminal .xterm-rows').innerText();

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page, d, key) {
  await page.goto(`${d.url}/`);
  await page.waitForSelector('#api-key');
  await page.fill('#api-key', key);
  await page.click('button[type=submit]');
  await page.waitForSelector('#sandbox-list');
}

async function typeLine(page, text) {
  await page.locator('#terminal .xterm-helper-textarea').focus();
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

let d, browser, ctx, page, sandboxId;

test('the console signs in with a key kept in an http-only cookie, and refuses a wrong key', async () => {
  await page.goto(`${d.url}/`);
  assert(page.url().endsWith('/console/#/signin') || page.url().includes('/console/'), `landed on ${page.url()}`);
  await page.waitForSelector('#api-key');
  await shot(page, '01-sign-in');
  await page.fill('#api-key', 'wrn_not_a_key');
  await page.click('button[type=submit]');
  await until('the refusal', async () => (await page.locator('#status').innerText()).includes('unknown API key'));
  await signIn(page, d, d.alice);
  assert((await page.locator('#tenant').innerText()).includes('alice'), 'the tenant is shown');
  const cookies = await ctx.cookies();
  const c = cookies.find((x) => x.name === 'warren_session');
  assert(c && c.httpOnly && c.sameSite === 'Strict', `session cookie: ${JSON.stringify(c)}`);
  assert(!(await page.evaluate(() => document.cookie)).includes('warren_session'), 'the page cannot read the cookie');
  assert(!(await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage))).includes(d.alice), 'the key is not stored in the page');
  assert(await page.locator('#nav-pools').isHidden(), 'pools are the operator\'s');
});

test('a sandbox made from the form opens with a terminal that runs echo hello', async () => {
  await page.fill('#new-name', 'lab');
  await page.fill('#new-memory', '256M');
  await page.fill('#new-pids', '128');
  await page.click('#new-create');
  await page.waitForURL(/#\/sandbox\//);
  sandboxId = decodeURIComponent(page.url().split('#/sandbox/')[1].split('/')[0]);
  const info = await d.api(d.alice, 'GET', `/v1/sandboxes/${sandboxId}`);
  assert(info.name === 'lab' && info.resources.memory === 256 * 1024 * 1024 && info.resources.pids === 128, `made: ${JSON.stringify(info)}`);
  await page.waitForSelector('#terminal .xterm-rows');
  await until('the terminal to connect', async () => (await page.locator('#term-state').innerText()) === 'connected');
  await typeLine(page, 'echo hello');
  await until('hello on the screen', async () => /^hello$/m.test(await screen(page)));
  await typeLine(page, 'echo sum-$((6*7))');
  await until('sum-42 on the screen', async () => (await screen(page)).includes('sum-42'));
  await shot(page, '02-terminal');
});

test('the terminal follows the window size', async () => {
  await typeLine(page, 'clear; stty size');
  const size = async () => {
    const m = /^(\d+) (\d+)$/m.exec(await screen(page));
    return m ? [Number(m[1]), Number(m[2])] : null;
  };
  const before = await until('stty size', size);
  await page.setViewportSize({ width: 900, height: 700 });
  await sleep(400);
  await typeLine(page, 'clear; stty size');
  const after = await until('a smaller size', async () => { const s = await size(); return s && s[1] < before[1] ? s : null; });
  assert(after[1] < before[1], `columns ${before[1]} -> ${after[1]}`);
  await page.setViewportSize({ width: 1280, height: 800 });
  await sleep(300);
});

test('a reload joins the same terminal and draws the screen again', async () => {
  await typeLine(page, 'export MARK=kept; echo before-reload');
  await until('the mark', async () => (await screen(page)).includes('before-reload'));
  await page.reload();
  await page.waitForSelector('#terminal .xterm-rows');
  await until('the old screen after reload', async () => (await screen(page)).includes('before-reload'));
  await until('connected', async () => (await page.locator('#term-state').innerText()) === 'connected');
  await typeLine(page, 'echo mark-is-$MARK');
  await until('the same shell', async () => (await screen(page)).includes('mark-is-kept'));
});

test('copy and paste go through the clipboard', async () => {
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: d.url });
  await page.evaluate(() => navigator.clipboard.writeText('echo pasted-$((2+3))'));
  await page.locator('#terminal .xterm-helper-textarea').focus();
  await page.keyboard.press('Control+Shift+V');
  await page.keyboard.press('Enter');
  await until('the pasted command ran', async () => /^pasted-5$/m.test(await screen(page)));
  assert(!(await screen(page)).includes('pasted-5echo'), 'the paste arrived twice');
});

test('a read-only share shows the same screen in a second browser and takes no keys', async () => {
  await page.click('#share-read');
  const link = await page.locator('#share-ro').inputValue();
  assert(link.includes('/console/#/shared/'), link);
  const guestCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  try {
    const guest = await guestCtx.newPage();
    await guest.goto(link);
    await until('the read-only banner', async () => (await guest.locator('#share-mode').innerText()).includes('Read-only'));
    await until('the shared screen', async () => (await screen(guest)).includes('mark-is-kept'));
    await typeLine(page, 'echo live-$((1+1))');
    await until('the guest sees new output', async () => (await screen(guest)).includes('live-2'));
    await typeLine(guest, 'echo typed-by-guest');
    await sleep(800);
    assert(!(await screen(page)).includes('typed-by-guest'), 'a read-only guest\'s keys reached the shell');
    await shot(guest, '03-shared-read-only');
    // Revoking cuts the guest off.
    const shares = await d.api(d.alice, 'GET', `/v1/sandboxes/${sandboxId}/shares`);
    assert(shares.length === 1 && !shares[0].write, JSON.stringify(shares));
    await d.api(d.alice, 'DELETE', `/v1/sandboxes/${sandboxId}/shares/${shares[0].id}`);
    await until('the guest told the share ended', async () => /revoked|ended/.test(await guest.locator('#share-mode').innerText()));
  } finally {
    await guestCtx.close();
  }
});

test('a read-write share lets the second browser type', async () => {
  await page.click('#share-write');
  const link = await page.locator('#share-rw').inputValue();
  const guestCtx = await browser.newContext();
  try {
    const guest = await guestCtx.newPage();
    await guest.goto(link);
    await until('the read-write banner', async () => (await guest.locator('#share-mode').innerText()).includes('Read-write'));
    await typeLine(guest, 'echo guest-$((5*5))');
    await until('the owner sees the guest\'s command', async () => (await screen(page)).includes('guest-25'));
  } finally {
    await guestCtx.close();
  }
});

test('files upload, list, edit and download', async () => {
  await page.click('a[href$="/files"]');
  await page.waitForSelector('#file-list');
  await until('the home directory', async () => (await page.locator('.crumbs').innerText()).length > 0);
  const dir = '/tmp';
  await page.evaluate((p) => { sessionStorage.setItem(`warren.path.${location.hash.split('/')[2]}`, p); }, dir);
  await page.reload();
  await page.waitForSelector('#file-list');
  await until('the /tmp listing', async () => (await page.locator('.crumbs').innerText()).includes('tmp'));
  await page.setInputFiles('#upload', { name: 'notes.txt', mimeType: 'text/plain', buffer: Buffer.from('first line\n') });
  await until('notes.txt listed', async () => (await page.locator('#file-list').innerText()).includes('notes.txt'));
  const got = await fetch(`${d.url}/v1/sandboxes/${sandboxId}/files?path=/tmp/notes.txt`, { headers: { Authorization: `Bearer ${d.alice}` } });
  assert((await got.text()) === 'first line\n', 'the upload reached the sandbox');
  await page.click('button[aria-label="Edit notes.txt"]');
  await page.waitForSelector('#editor-text');
  await page.fill('#editor-text', 'first line\nedited in the browser\n');
  await page.click('#editor-save');
  await until('the edit saved', async () => {
    const r = await fetch(`${d.url}/v1/sandboxes/${sandboxId}/files?path=/tmp/notes.txt`, { headers: { Authorization: `Bearer ${d.alice}` } });
    return (await r.text()).includes('edited in the browser');
  });
  await shot(page, '04-files');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('button[aria-label="Download notes.txt"]'),
  ]);
  const path = await download.path();
  assert(readFileSync(path, 'utf8') === 'first line\nedited in the browser\n', 'the download is the file');
  assert(download.suggestedFilename() === 'notes.txt', download.suggestedFilename());
});

test('processes, events, ports and usage pages show the sandbox', async () => {
  await page.click('a[href$="/processes"]');
  await until('the shell in the processes', async () => (await page.locator('#process-list').innerText()).includes('/bin/bash'));
  await shot(page, '05-processes');
  await page.click('a[href$="/events"]');
  await until('the created event', async () => (await page.locator('#event-list').innerText()).includes('created'));
  await shot(page, '06-events');
  await page.click('a[href$="/ports"]');
  await shot(page, '07-ports');
  await page.click('a[href$="/usage"]');
  await until('three charts', async () => (await page.locator('#charts .chart').count()) === 3);
  await shot(page, '08-usage');
});

/** The page a port link opened, once it has loaded. When none opens, the error names
 * what the console said instead (its status line) and where it was. */
async function openedPort(click) {
  let popup;
  try {
    [popup] = await Promise.all([ctx.waitForEvent('page'), click()]);
  } catch (e) {
    const said = await page.locator('#status').innerText({ timeout: 1000 }).catch(() => '');
    await shot(page, 'no-port-page').catch(() => {});
    throw new Error(`${e.message}; the console at ${page.url()} said: ${said || '(nothing)'}`);
  }
  await popup.waitForLoadState();
  return popup;
}

test('a port opens in the browser through a one-time link, on a host of its own, and nowhere else', async () => {
  // A web server inside the sandbox, on its loopback.
  const pid = await d.background(d.alice, sandboxId,
    'mkdir -p /tmp/site && echo served-from-inside > /tmp/site/index.html && cd /tmp/site && exec python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1');
  await page.click('a[href$="/ports"]');
  await page.fill('#open-port', '8765');
  const popup = await until('the server inside answering', async () => {
    const p = await openedPort(() => page.click('#open-port-go'));
    if ((await p.content()).includes('served-from-inside')) return p;
    await p.close();
    return null;
  }, 30000);
  const url = new URL(popup.url());
  assert(url.hostname === `8765-${sandboxId}.localhost`, `opened ${popup.url()}`);
  assert(!url.search.includes('warren_port_link'), `the code stays in the address: ${popup.url()}`);
  const cookies = await ctx.cookies(popup.url());
  const grant = cookies.find((c) => c.name === '__warren_port');
  assert(grant && grant.httpOnly && !grant.domain.startsWith('.'), `the grant's cookie: ${JSON.stringify(cookies)}`);
  assert(!(await popup.evaluate(() => document.cookie)).includes('__warren_port'), 'the page reads the grant');
  await popup.reload();
  assert((await popup.content()).includes('served-from-inside'), 'a reload keeps the access');
  await shot(popup, '20-port-opened');
  await popup.close();
  // Without the grant: the sandbox's id, or an API key, opens nothing; a code is good once.
  const host = `8765-${sandboxId}.localhost:${d.port}`;
  const at = (path, headers = {}) => raw(`${d.url}${path}`, { headers: { Host: host, ...headers } });
  assert((await at('/')).status === 502, 'the port opened for its id alone');
  assert((await at('/', { Authorization: `Bearer ${d.alice}` })).status === 502, 'an API key opened the port');
  const link = await d.api(d.alice, 'POST', `/v1/sandboxes/${sandboxId}/ports/8765/link`);
  assert(link.url === `http://8765-${sandboxId}.localhost:${d.port}/?warren_port_link=${link.code}`, JSON.stringify(link));
  const first = await at(`/?warren_port_link=${link.code}`);
  assert(first.status === 303 && first.headers.location === '/', `first use: ${first.status} ${JSON.stringify(first.headers)}`);
  const cookie = first.headers['set-cookie'][0].split(';')[0];
  assert((await at(`/?warren_port_link=${link.code}`)).status === 502, 'a code was good twice');
  assert((await at('/', { Cookie: cookie })).body.includes('served-from-inside'), 'the grant opens the port');
  // The grant is for that port of that sandbox only.
  const other = await raw(`${d.url}/`, { headers: { Host: `8766-${sandboxId}.localhost:${d.port}`, Cookie: cookie } });
  assert(other.status === 502, 'a grant opened another port');
  // Another tenant cannot ask for a link to it.
  const refused = await fetch(`${d.url}/v1/sandboxes/${sandboxId}/ports/8765/link`, { method: 'POST', headers: { Authorization: `Bearer ${d.bob}` } });
  assert(refused.status === 404, `another tenant's link: ${refused.status}`);
  await d.api(d.alice, 'POST', `/v1/sandboxes/${sandboxId}/processes/${pid}/signal`, { signal: 9 });
});

test('JupyterLab, built from its recipe, opens from the console and runs a cell', async () => {
  // E2B's `base` (Debian with python and pip), from the archive the E2B suite keeps, or
  // built now; then `warren template jupyterlab` on it (PyPI).
  const archive = process.env.WARREN_BASE_ARCHIVE;
  if (archive && existsSync(archive)) await d.cliLong('template', 'import', archive, '--name', 'base', '--setuid');
  else await d.cliLong('template', 'base', ...(archive ? ['--save', archive] : []));
  await d.cliLong('template', 'jupyterlab', '--quiet-progress');
  const lab = await d.api(d.alice, 'POST', '/v1/sandboxes', { template: 'jupyterlab', name: 'notebook' });
  try {
    await page.goto(`${d.url}/console/#/sandbox/${lab.id}/ports`);
    await page.fill('#open-port', '8888');
    const nb = await openedPort(() => page.click('#open-port-go'));
    nb.setDefaultTimeout(60000);
    assert(new URL(nb.url()).hostname === `8888-${lab.id}.localhost`, `opened ${nb.url()}`);
    // A new Python notebook from the launcher; a cell typed and run.
    await nb.locator('.jp-LauncherCard[data-category="Notebook"]').first().click();
    const code = 'print(6 * 7, "from the kernel")';
    const cell = nb.locator('.jp-Notebook .jp-Cell').first();
    const editor = cell.locator('.cm-content');
    try {
      // Keys typed while the new notebook is still being set up can be lost: typed
      // again until the cell holds the code.
      await until('the cell to hold the code', async () => {
        if ((await editor.innerText({ timeout: 5000 })).includes(code)) return true;
        await editor.click();
        await nb.keyboard.press('Control+a');
        await nb.keyboard.type(code);
        return false;
      }, 60000);
      // Run in place (Ctrl+Enter); run again every 10 s while no output shows, as a
      // kernel still starting may not have taken the first.
      let ran = 0;
      await until('the cell\'s output', async () => {
        const out = cell.locator('.jp-OutputArea-output');
        if (await out.count() && (await out.first().innerText()).includes('42 from the kernel')) return true;
        if (Date.now() - ran > 10000) {
          ran = Date.now();
          await editor.click();
          await nb.keyboard.press('Control+Enter');
        }
        return false;
      }, 120000);
    } catch (e) {
      await shot(nb, '21-jupyterlab-failed');
      throw e;
    }
    await shot(nb, '21-jupyterlab');
    await nb.close();
  } finally {
    await d.api(d.alice, 'DELETE', `/v1/sandboxes/${lab.id}`).catch(() => {});
    d.unix('DELETE', '/v1/templates/jupyterlab');
    // Back to the sandbox the next tests use.
    await page.goto(`${d.url}/console/#/sandbox/${sandboxId}/ports`);
  }
});

test('pause and resume from the console', async () => {
  await page.click('a[href$="/terminal"]');
  await page.getByRole('button', { name: 'Pause' }).first().click();
  await until('paused', async () => (await d.api(d.alice, 'GET', `/v1/sandboxes/${sandboxId}`)).state === 'paused');
  await until('the page shows paused', async () => (await page.locator('h1 .state').innerText()) === 'paused');
  await shot(page, '09-paused');
  await page.getByRole('button', { name: 'Resume' }).first().click();
  await until('running', async () => (await d.api(d.alice, 'GET', `/v1/sandboxes/${sandboxId}`)).state === 'running');
  await until('the page shows running', async () => (await page.locator('h1 .state').innerText()) === 'running');
  await page.reload();
  try {
    await until('the terminal again', async () => (await screen(page)).includes('guest-25'));
  } catch (e) {
    // What the agent holds of the terminal's output, to tell a lost replay from a lost process.
    const pid = Number(await page.evaluate((id) => sessionStorage.getItem(`warren.terminal.${id}`), sandboxId));
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 2000);
    let held = '';
    try {
      const r = await fetch(`${d.url}/v1/sandboxes/${sandboxId}/processes/${pid}/attach?replay=true`, { headers: { Authorization: `Bearer ${d.alice}` }, signal: ac.signal });
      for await (const chunk of r.body) held += Buffer.from(chunk).toString();
    } catch { /* aborted */ }
    const text = held.split('\n').filter(Boolean).map((l) => { try { const v = JSON.parse(l); return v.data ? Buffer.from(v.data, 'base64').toString() : ''; } catch { return ''; } }).join('');
    throw new Error(`${e.message}; pid ${pid}; the agent holds: ${JSON.stringify(text.slice(-400))}; processes: ${JSON.stringify(await d.api(d.alice, 'GET', `/v1/sandboxes/${sandboxId}/processes`))}`);
  }
  await typeLine(page, 'echo after-resume-$MARK');
  await until('the shell survived the pause', async () => (await screen(page)).includes('after-resume-kept'));
});

test('the list updates without a reload and shows a tenant its own sandboxes only', async () => {
  await page.goto(`${d.url}/console/#/`);
  await page.waitForSelector('#sandbox-list');
  const theirs = await d.api(d.bob, 'POST', '/v1/sandboxes', { name: 'bobs' });
  const mine = await d.api(d.alice, 'POST', '/v1/sandboxes', { name: 'made-elsewhere' });
  await until('the new sandbox listed', async () => (await page.locator('#sandbox-list').innerText()).includes('made-elsewhere'));
  const text = await page.locator('#sandbox-list').innerText();
  assert(!text.includes('bobs') && !text.includes(theirs.id), 'another tenant\'s sandbox is listed');
  const status = await page.evaluate(async (id) => (await fetch(`/v1/sandboxes/${id}`)).status, theirs.id);
  assert(status === 404, `another tenant's sandbox answered ${status}`);
  await until('usage in the list', async () => /\d+(\.\d)? (KiB|MiB)/.test(await page.locator('#sandbox-list').innerText()), 20000);
  await page.fill('#filter', 'made-else');
  await until('the filter', async () => !(await page.locator('#sandbox-list').innerText()).includes('alice/lab'));
  await shot(page, '10-sandboxes');
  await page.fill('#filter', '');
  await d.api(d.alice, 'DELETE', `/v1/sandboxes/${mine.id}`);
  await until('the removed sandbox gone', async () => !(await page.locator('#sandbox-list').innerText()).includes('made-elsewhere'));
});

test('a request without the CSRF token, or from another origin, is refused', async () => {
  const status = await page.evaluate(async () => (await fetch('/v1/sandboxes', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' })).status);
  assert(status === 403, `POST without the CSRF token answered ${status}`);
  const cookie = (await ctx.cookies()).find((c) => c.name === 'warren_session');
  const h = { Cookie: `warren_session=${cookie.value}`, Host: `127.0.0.1:${d.port}` };
  const ok = await raw(`${d.url}/v1/sandboxes`, { headers: h });
  assert(ok.status === 200, `GET with the cookie answered ${ok.status}`);
  const evil = await raw(`${d.url}/v1/sandboxes`, { headers: { ...h, Origin: 'http://evil.example' } });
  assert(evil.status === 403, `another origin answered ${evil.status}`);
  const ws = await raw(`${d.url}/v1/sandboxes/${sandboxId}/pty`, {
    headers: { ...h, Origin: 'http://evil.example', Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Version': '13', 'Sec-WebSocket-Key': 'dGhlIHNhbXBsZSBub25jZQ==' },
  });
  assert(ws.status === 403, `a cross-site terminal handshake answered ${ws.status}`);
  const before = (await d.api(d.alice, 'GET', '/v1/sandboxes')).length;
  const forged = await raw(`${d.url}/v1/sandboxes`, { method: 'POST', headers: { ...h, 'Content-Type': 'application/json', 'X-CSRF-Token': 'guess' }, body: '{}' });
  assert(forged.status === 403, `a wrong CSRF token answered ${forged.status}`);
  assert((await d.api(d.alice, 'GET', '/v1/sandboxes')).length === before, 'a refused request made a sandbox');
});

test('a page on another port of the same host cannot use the session (a sandbox\'s published port)', async () => {
  const port = await freePort();
  const evil = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html' });
    res.end(`<!doctype html><body><form id=f method=POST action="${d.url}/v1/sandboxes" enctype="text/plain"><input name='{"name":"forged","x":"' value='"}'></form><script>
      const ws = new WebSocket('ws://127.0.0.1:${d.port}/v1/sandboxes/${sandboxId}/pty?cmd=' + encodeURIComponent('touch /tmp/pwned-by-ws'));
      ws.onclose = () => { document.title = 'ws-closed'; };
      fetch('${d.url}/v1/sandboxes/${sandboxId}/exec', { method: 'POST', credentials: 'include', mode: 'no-cors', headers: { 'Content-Type': 'text/plain' }, body: JSON.stringify({ command: { shell: 'touch /tmp/pwned-by-fetch' } }) }).catch(() => {});
      setTimeout(() => document.getElementById('f').submit(), 300);
    </script></body>`);
  });
  await new Promise((r) => evil.listen(port, '127.0.0.1', r));
  try {
    const before = (await d.api(d.alice, 'GET', '/v1/sandboxes')).length;
    const p = await ctx.newPage();
    await p.goto(`http://127.0.0.1:${port}/`);
    await sleep(1500);
    await p.close();
    const after = await d.api(d.alice, 'GET', '/v1/sandboxes');
    assert(after.length === before && !after.some((s) => s.name === 'forged'), 'a cross-origin form made a sandbox');
    for (const f of ['/tmp/pwned-by-ws', '/tmp/pwned-by-fetch']) {
      const r = await fetch(`${d.url}/v1/sandboxes/${sandboxId}/files/stat?path=${f}`, { headers: { Authorization: `Bearer ${d.alice}` } });
      assert(r.status === 404, `${f}: a cross-origin page ran a command (${r.status})`);
    }
  } finally {
    evil.close();
  }
});

test('templates: build one from a recipe file with its log streaming, then remove it', async () => {
  await page.goto(`${d.url}/console/#/templates`);
  await page.waitForSelector('#template-list');
  await page.fill('#build-name', 'console-built');
  const recipe = '#!/bin/sh\r\n# made by the console test\r\necho step-one-output\r\n\r\nmkdir -p /opt/built && echo yes > /opt/built/flag\r\n';
  await page.setInputFiles('#build-recipe', { name: 'recipe.txt', mimeType: 'text/plain', buffer: Buffer.from(recipe) });
  await until('the steps from the file', async () => (await page.locator('#build-steps').inputValue()).includes('echo step-one-output'));
  assert(!(await page.locator('#build-steps').inputValue()).includes('\r'), 'CRLF line ends are read as lines');
  assert((await page.locator('#build-recipe-note').innerText()).includes('2 steps from recipe.txt'), await page.locator('#build-recipe-note').innerText());
  await page.getByRole('form', { name: 'Build a template' }).getByLabel('Ready command', { exact: true }).fill('test -f /opt/built/flag');
  await page.fill('#build-ready-timeout', '30');
  const backends = await page.locator('#build-isolation option').evaluateAll((os) => os.map((o) => o.value).filter(Boolean));
  assert(backends.includes('namespace'), `the build's backends: ${backends}`);
  await page.selectOption('#build-isolation', 'namespace');
  await shot(page, '15-template-recipe');
  await page.click('#build-go');
  await until('the build log', async () => (await page.locator('#build-log').innerText()).includes('step-one-output'), 60000);
  await until('the build done', async () => (await page.locator('#build-log').innerText()).includes('done: template console-built'), 120000);
  const built = await page.locator('#build-log').innerText();
  assert(!built.includes('made by the console test') && !built.includes('#!/bin/sh'), `comments ran as steps: ${built}`);
  assert(built.includes('$ mkdir -p /opt/built'), built);
  await until('the template listed', async () => (await page.locator('#template-list').innerText()).includes('console-built'));
  const t = await d.api(d.alice, 'GET', '/v1/templates/console-built');
  assert(t.ready_cmd === 'test -f /opt/built/flag' && t.ready_timeout_secs === 30 && t.isolation === 'namespace',
    `the template's metadata: ${JSON.stringify(t)}`);
  await shot(page, '11-templates');
  page.once('dialog', (dlg) => dlg.accept());
  await page.click('button[aria-label="Remove console-built"]');
  await until('the template gone', async () => !(await page.locator('#template-list').innerText()).includes('console-built'));
});

/** A small `docker save` archive made with tar(1): one layer of one file. */
function dockerSave(dir) {
  const root = join(dir, 'root'), img = join(dir, 'img');
  mkdirSync(join(root, 'etc'), { recursive: true });
  mkdirSync(join(img, '0'), { recursive: true });
  writeFileSync(join(root, 'etc', 'from-the-console'), 'uploaded\n');
  execFileSync('tar', ['-cf', join(img, '0', 'layer.tar'), '-C', root, 'etc']);
  const sha = (b) => createHash('sha256').update(b).digest('hex');
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [`sha256:${sha(readFileSync(join(img, '0', 'layer.tar')))}`] } }));
  const configName = `${sha(config)}.json`;
  writeFileSync(join(img, configName), config);
  writeFileSync(join(img, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: ['console:latest'], Layers: ['0/layer.tar'] }]));
  execFileSync('tar', ['-cf', join(dir, 'image.tar'), '-C', img, configName, '0/layer.tar', 'manifest.json']);
  return readFileSync(join(dir, 'image.tar'));
}

test('templates: import an archive from the browser, its progress shown, then list it as the tenant\'s own', async () => {
  const archive = dockerSave(mkdtempSync(join(d.dir, 'archive-')));
  await page.goto(`${d.url}/console/#/templates`);
  await page.waitForSelector('#import-file');
  assert(!(await page.locator('#import-setuid').count()), 'a tenant is offered setuid');
  await page.setInputFiles('#import-file', { name: 'image.tar', mimeType: 'application/x-tar', buffer: archive });
  await page.fill('#import-name', 'console-imported');
  // A size limit below the archive's size: refused, nothing made.
  await page.getByLabel('Size limit', { exact: true }).fill('1K');
  await page.click('#import-go');
  await until('the size refusal', async () => (await page.locator('#import-result').innerText()).includes('larger than 1 KiB'), 30000);
  assert((await page.locator('#import-result').innerText()).includes('payload_too_large'), await page.locator('#import-result').innerText());
  assert(await page.locator('#import-progress').isHidden(), 'a refused import still shows what was sent');
  // The options, reached by their labels.
  const backends = await page.locator('#import-isolation option').evaluateAll((os) => os.map((o) => o.value).filter(Boolean));
  const isolation = backends.find((b) => b !== 'namespace') || 'namespace';
  await page.getByLabel('Size limit', { exact: true }).fill('64M');
  await page.fill('#import-start', 'sleep 1000');
  const importing = page.getByRole('form', { name: 'Import an image' });
  await importing.getByLabel('Ready command', { exact: true }).fill('test -e /etc/from-the-console');
  await importing.getByLabel('Ready timeout (s)', { exact: true }).fill('30');
  await page.selectOption('#import-isolation', isolation);
  assert((await page.locator('label[for="import-isolation"]').innerText()).startsWith('Isolation'), 'the isolation field is labelled');
  await shot(page, '16-template-import-options');
  await page.click('#import-go');
  await until('the import done', async () => (await page.locator('#import-result').innerText()).includes('template console-imported'), 60000);
  assert((await page.locator('#import-percent').innerText()).includes('100%'), 'the progress reached 100%');
  assert(await page.locator('#import-progress').evaluate((p) => p.value === p.max), 'the progress bar is full');
  await until('the template listed', async () => (await page.locator('#template-list').innerText()).includes('console-imported'));
  await shot(page, '12-template-import');
  const t = await d.api(d.alice, 'GET', '/v1/templates/console-imported');
  assert(t.ready_cmd === 'test -e /etc/from-the-console' && t.ready_timeout_secs === 30 && t.start_cmd === 'sleep 1000' && t.isolation === isolation,
    `the template's metadata: ${JSON.stringify(t)}`);
  const others = await d.api(d.bob, 'GET', '/v1/templates');
  assert(!others.some((x) => x.name === 'console-imported'), 'another tenant does not see it');
  // A second import of the same name is refused, and says why.
  await page.click('#import-go');
  await until('the refusal shown', async () => (await page.locator('#import-result').innerText()).startsWith('error:'));
  page.once('dialog', (dlg) => dlg.accept());
  await page.click('button[aria-label="Remove console-imported"]');
  await until('the template gone', async () => !(await page.locator('#template-list').innerText()).includes('console-imported'));
});

test('an operator sets a pool from the console, sees it fill, changes and removes it', async () => {
  const opCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  try {
    const op = await opCtx.newPage();
    op.setDefaultTimeout(20000);
    await signIn(op, d, d.operator);
    assert(await op.locator('#nav-pools').isVisible(), 'the pools link');
    await op.click('#nav-pools');
    await op.waitForSelector('#pool-form');
    await op.selectOption('#pool-template', 'host');
    await op.getByLabel('Kept ready', { exact: true }).fill('1');
    await op.getByLabel('Memory', { exact: true }).fill('256M');
    await op.click('#pool-set');
    await until('the pool filled', async () => (await op.locator('#pool-list').innerText()).includes('1/1'), 60000);
    let pools = await d.api(d.operator, 'GET', '/v1/pools');
    assert(pools.length === 1 && pools[0].ready === 1 && pools[0].spec.max === 1 && pools[0].spec.resources.memory === 256 * 1024 * 1024, JSON.stringify(pools));
    await shot(op, '12-pools');
    // Change fills the form with the pool's profile: setting it again changes that pool.
    await op.click('#pool-change-0');
    assert(await op.evaluate(() => document.activeElement?.id === 'pool-min'), 'Change moves the focus to the size');
    assert((await op.locator('#pool-memory').inputValue()) === '256M', await op.locator('#pool-memory').inputValue());
    await op.fill('#pool-max', '2');
    await op.click('#pool-set');
    await until('the new maximum', async () => (await d.api(d.operator, 'GET', '/v1/pools'))[0]?.spec.max === 2);
    pools = await d.api(d.operator, 'GET', '/v1/pools');
    assert(pools.length === 1, `a second pool was made: ${JSON.stringify(pools)}`);
    await shot(op, '17-pools-changed');
    op.once('dialog', (dlg) => dlg.accept());
    await op.click('#pool-remove-0');
    await until('the pool gone', async () => (await op.locator('#pool-list').innerText()).includes('No pools'));
    assert(!(await d.api(d.operator, 'GET', '/v1/pools')).length, 'the pool is still set');
  } finally {
    await opCtx.close();
  }
});

test('a tenant sees no pool controls and may not set a pool', async () => {
  await page.goto(`${d.url}/console/#/`);
  await page.waitForSelector('#sandbox-list');
  assert(await page.locator('#nav-pools').isHidden(), 'the pools link is shown to a tenant');
  await page.goto(`${d.url}/console/#/pools`);
  await until('the pools page', async () => (await page.locator('main').innerText()).includes('operator'));
  assert(!(await page.locator('#pool-form, #pool-set, #pool-list').count()), 'a tenant is shown pool controls');
  const denied = await fetch(`${d.url}/v1/pools`, { headers: { Authorization: `Bearer ${d.alice}` } });
  assert(denied.status === 403, `a tenant's key read the pools: ${denied.status}`);
  const set = await page.evaluate(async () => {
    const { csrf_token: csrf } = await (await fetch('/console/session')).json();
    const r = await fetch('/v1/pools', { method: 'POST', headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf }, body: JSON.stringify({ template: 'host', min: 1, max: 1 }) });
    return r.status;
  });
  assert(set === 403, `a tenant's session set a pool: ${set}`);
  assert(!(await d.api(d.operator, 'GET', '/v1/pools')).length, 'a pool was set');
});

test('the keyboard alone signs in and reaches a sandbox; the pages fit a phone', async () => {
  const kb = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  try {
    const p = await kb.newPage();
    await p.goto(`${d.url}/console/`);
    await p.waitForSelector('#api-key');
    await until('the key field focused', async () => p.evaluate(() => document.activeElement?.id === 'api-key'));
    await p.keyboard.type(d.alice);
    await p.keyboard.press('Enter');
    await p.waitForSelector('#sandbox-list .sandbox-link');
    await shot(p, '13-phone-sandboxes');
    // Tab to the sandbox's link and open it with Enter.
    let found = false;
    for (let i = 0; i < 60 && !found; i++) {
      await p.keyboard.press('Tab');
      found = await p.evaluate(() => document.activeElement?.classList.contains('sandbox-link'));
    }
    assert(found, 'the sandbox link is reachable with Tab');
    await p.keyboard.press('Enter');
    await p.waitForSelector('#terminal .xterm-rows');
    await until('the phone terminal', async () => (await p.locator('#term-state').innerText()) === 'connected');
    await typeLine(p, 'echo phone-$((3*3))');
    await until('the phone terminal runs commands', async () => (await screen(p)).includes('phone-9'));
    await shot(p, '14-phone-terminal');
    const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 1, `the page is ${overflow}px wider than a phone`);
    // Leaving the terminal for the page's buttons with the keyboard.
    await p.locator('#terminal .xterm-helper-textarea').focus();
    await p.keyboard.press('Control+Shift+X');
    assert(await p.evaluate(() => !document.activeElement?.classList.contains('xterm-helper-textarea')), 'Ctrl+Shift+X leaves the terminal');
  } finally {
    await kb.close();
  }
});

test('the template and pool forms fit a phone', async () => {
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  try {
    const p = await phone.newPage();
    await signIn(p, d, d.operator);
    for (const [hash, ready, name] of [['#/templates', '#import-go', '18-phone-templates'], ['#/pools', '#pool-set', '19-phone-pools']]) {
      await p.goto(`${d.url}/console/${hash}`);
      await p.waitForSelector(ready);
      await shot(p, name);
      const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      assert(overflow <= 1, `${hash} is ${overflow}px wider than a phone`);
    }
  } finally {
    await phone.close();
  }
});

test('signing out ends the session', async () => {
  const cookie = (await ctx.cookies()).find((c) => c.name === 'warren_session');
  await page.goto(`${d.url}/console/#/`);
  await page.click('#sign-out');
  await page.waitForSelector('#api-key');
  const r = await raw(`${d.url}/v1/sandboxes`, { headers: { Cookie: `warren_session=${cookie.value}` } });
  assert(r.status === 401, `the old cookie answered ${r.status}`);
});

async function main() {
  if (process.getuid() !== 0) {
    console.log('SKIPPED console: the console tests make real sandboxes and need root');
    console.log('0 passed, 0 failed, 1 skipped');
    return;
  }
  if (!existsSync(CHROMIUM)) {
    console.log(`SKIPPED console: no browser at ${CHROMIUM} (apt-get install chromium)`);
    console.log('0 passed, 0 failed, 1 skipped');
    return;
  }
  mkdirSync(SHOTS, { recursive: true });
  d = new Daemon();
  await d.start();
  let passed = 0, failed = 0;
  try {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    });
    ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
    page = await ctx.newPage();
    page.setDefaultTimeout(20000);
    for (const t of tests) {
      const t0 = Date.now();
      try {
        await t.fn();
        passed++;
        console.log(`ok   ${t.name} (${Date.now() - t0} ms)`);
      } catch (e) {
        failed++;
        console.log(`FAIL ${t.name}\n     ${String(e.stack || e).split('\n').join('\n     ')}`);
        await shot(page, `failed-${passed + failed}`).catch(() => {});
      }
    }
  } finally {
    await browser?.close();
    try { await d.stop(); } catch (e) { failed++; console.log(`FAIL cleanup: ${e.message}`); }
  }
  writeFileSync(join(SHOTS, 'README.txt'), `Screenshots of the web console's pages, made by tests/console/console.test.mjs.\n`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed ? 1 : 0;
}

main().catch((e) => { console.log(`FAIL setup: ${e.stack || e}`); console.log('0 passed, 1 failed'); process.exitCode = 1; });
