// Drives the flotilla dashboard in Debian's Chromium (/usr/bin/chromium) with playwright-core.
// Started by e2e/tests/dashboard.rs against a real hub; it prints progress lines the test reads:
//
//   node dashboard.mjs live URL ARTIFACTS CLUSTERS REVISION DRIFT_CLUSTER DRIFT_DELIVERY
//     The grid shows every cluster of CLUSTERS (comma-separated) with REVISION, synced and
//     healthy; then it prints "READY", the test makes a drift, and the cell of
//     (DRIFT_CLUSTER, DRIFT_DELIVERY) must turn "drifted" without a reload.
//   node dashboard.mjs perf URL ARTIFACTS TOTAL
//     Time from navigation start to the grid rendered (performance mark), with TOTAL clusters.
//
// The last line is "RESULT <json>"; any failure exits non-zero with the reason on stderr.
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const CHROMIUM = process.env.FLOTILLA_CHROMIUM || '/usr/bin/chromium';
const [mode, url, artifacts, ...rest] = process.argv.slice(2);
if (!mode || !url || !artifacts) {
  console.error('usage: node dashboard.mjs live|perf URL ARTIFACT_DIR …');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

function fail(message) {
  throw new Error(message);
}

async function withBrowser(fn) {
  const profile = mkdtempSync(join(tmpdir(), 'flotilla-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  const offsite = [];
  context.on('request', (r) => {
    const u = new URL(r.url());
    const base = new URL(url);
    if (!['data:', 'about:'].includes(u.protocol) && u.host !== base.host) offsite.push(r.url());
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    const result = await fn(page);
    if (offsite.length) fail(`the dashboard loaded assets from elsewhere: ${offsite.join(', ')}`);
    const real = errors.filter((e) => !/favicon/.test(e));
    if (real.length) fail(`errors in the page: ${real.join('; ')}`);
    return result;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

// Nothing of the page's own making may leak into the text: "null", "undefined", "NaN".
async function checkText(page, where) {
  const text = await page.locator('main').innerText();
  const m = text.match(/\b(null|undefined|NaN)\b|\[object Object\]/);
  if (m) fail(`the ${where} shows "${m[0]}": ${text}`);
}

async function gridCells(page) {
  return page.$$eval('#grid tbody tr', (rows) => rows.map((r) => ({
    cluster: r.dataset.cluster,
    cells: [...r.querySelectorAll('td.cell')].map((c) => ({
      delivery: c.dataset.delivery,
      state: c.dataset.state,
      text: c.innerText,
      label: c.querySelector('a')?.getAttribute('aria-label') || '',
    })),
  })));
}

async function live(page) {
  const [clusters, revision, driftCluster, driftDelivery] = rest;
  const wanted = clusters.split(',');
  const short = revision.slice(0, 7);
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('body[data-grid-rendered="true"]', { timeout: 15000 });
  // The grid may be a pass behind the API server: wait for the state the test saw there.
  const deadline = Date.now() + 30000;
  let rows;
  for (;;) {
    rows = await gridCells(page);
    const ok = wanted.every((name) => {
      const r = rows.find((x) => x.cluster === name);
      return r && r.cells.length >= 2 && r.cells.every((c) => c.state === 'synced' && c.text.includes(short));
    });
    if (ok) break;
    if (Date.now() > deadline) {
      fail(`grid does not show ${wanted.join(', ')} synced at ${short}: ${JSON.stringify(rows)}`);
    }
    await page.waitForTimeout(250);
  }
  for (const r of rows.filter((x) => wanted.includes(x.cluster))) {
    for (const c of r.cells) {
      if (!/health Healthy/.test(c.label)) fail(`${r.cluster} ${c.delivery} is not healthy: ${c.label}`);
    }
  }
  // The tooltip shows revision, health and drift.
  const cellSel = `#grid tr[data-cluster="${driftCluster}"] td[data-delivery="${driftDelivery}"]`;
  await page.hover(`${cellSel} a`);
  const tip = await page.locator(`${cellSel} .tip`).innerText();
  for (const want of ['Revision', revision, 'Health', 'Healthy', 'Drift', 'none']) {
    if (!tip.includes(want)) fail(`tooltip lacks ${want}: ${tip}`);
  }
  await page.mouse.move(0, 0);
  await page.screenshot({ path: join(artifacts, 'dashboard-fleet-synced.png'), fullPage: true });

  // The same document must see the drift: mark it, and check the mark is still there after.
  await page.evaluate(() => { window.flotillaSameDocument = true; });
  const liveText = await page.locator('#live').innerText();
  if (liveText.trim() !== 'live') fail(`the live indicator says ${liveText}`);
  console.log('READY');
  const t0 = Date.now();
  await page.waitForSelector(`${cellSel}[data-state="drifted"]`, { timeout: 30000 })
    .catch(async () => fail(`cell ${driftCluster} × ${driftDelivery} did not turn drifted within 30 s: ${JSON.stringify(await gridCells(page))}`));
  const driftSeconds = (Date.now() - t0) / 1000;
  if (!(await page.evaluate(() => window.flotillaSameDocument === true))) fail('the page was reloaded');
  const navigations = await page.evaluate(() => performance.getEntriesByType('navigation').length);
  const driftLabel = await page.locator(`${cellSel} a`).getAttribute('aria-label');
  if (!/drifted/.test(driftLabel)) fail(`drifted cell label: ${driftLabel}`);
  const others = (await gridCells(page)).filter((r) => wanted.includes(r.cluster))
    .flatMap((r) => r.cells.map((c) => ({ ...c, cluster: r.cluster })))
    .filter((c) => !(c.cluster === driftCluster && c.delivery === driftDelivery) && c.state !== 'synced');
  if (others.length) fail(`cells other than the drifted one changed: ${JSON.stringify(others)}`);
  await checkText(page, 'fleet overview');
  await page.screenshot({ path: join(artifacts, 'dashboard-fleet.png'), fullPage: true });

  // The cluster page names the drifted object in its last drift events.
  await page.click(`#grid tr[data-cluster="${driftCluster}"] th a`);
  await page.waitForSelector('#drift-events li', { timeout: 15000 });
  const events = await page.locator('#drift-events').innerText();
  if (!/drifted/.test(events)) fail(`drift events: ${events}`);
  const facts = await page.locator('.facts').innerText();
  if (!/connected/.test(facts)) fail(`cluster facts: ${facts}`);
  const objects = await page.locator('#cluster-deliveries details').count();
  if (objects < 2) fail(`per-object results missing on the cluster page (${objects} deliveries with results)`);
  await checkText(page, 'cluster page');
  await page.screenshot({ path: join(artifacts, 'dashboard-cluster.png'), fullPage: true });

  // The delivery page shows the rollout and what it depends on.
  await page.goto(`${url}#/deliveries/${driftDelivery.replace('/', '/')}`);
  await page.waitForSelector('#delivery-clusters tbody tr', { timeout: 15000 });
  const rollout = await page.locator('label[for="rollout-progress"]').innerText();
  await checkText(page, 'delivery page');
  await page.screenshot({ path: join(artifacts, 'dashboard-delivery.png'), fullPage: true });
  return { driftSeconds, navigations, events, rollout, tooltip: tip };
}

async function perf(page) {
  const [total] = rest;
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('body[data-grid-rendered="true"]', { timeout: 30000 });
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0];
    const api = performance.getEntriesByType('resource').find((r) => r.name.includes('/api/v1/fleet'));
    const js = performance.getEntriesByType('resource').find((r) => r.name.includes('/assets/app.js'));
    return {
      renderMs: performance.getEntriesByName('flotilla:grid-rendered')[0].startTime,
      htmlMs: nav.responseEnd,
      scriptMs: js ? js.responseEnd : null,
      apiStartMs: api ? api.startTime : null,
      apiMs: api ? api.duration : null,
      apiBytes: api ? api.encodedBodySize : null,
    };
  });
  const { renderMs } = timing;
  const caption = await page.locator('#grid caption').innerText();
  if (!caption.includes(`of ${total} clusters`)) fail(`the grid does not show ${total} clusters: ${caption}`);
  await checkText(page, 'fleet overview');
  const rows = await page.locator('#grid tbody tr').count();
  if (rows !== 50) fail(`the first page has ${rows} rows, not 50`);
  // Usable at that size: the last page and a label filter work.
  await page.click('text=Last »');
  await page.waitForFunction(() => /page (\d+) of \1\b/.test(document.querySelector('#grid caption')?.textContent || ''), null, { timeout: 10000 });
  await page.screenshot({ path: join(artifacts, 'dashboard-1000.png'), fullPage: false });
  return { ...timing, rows, caption };
}

const run = { live, perf }[mode] || fail(`unknown mode ${mode}`);
try {
  const result = await withBrowser(run);
  console.log(`RESULT ${JSON.stringify(result)}`);
} catch (e) {
  console.error(`dashboard browser test failed: ${e.message}`);
  process.exit(1);
}
