// flotilla dashboard: plain JavaScript, no build step, no external assets. Reads the hub's
// JSON API and re-reads what it shows whenever /api/v1/events says something changed.
'use strict';
(() => {
  const STATES = {
    synced: { icon: '✓', label: 'synced' },
    progressing: { icon: '↻', label: 'progressing' },
    drifted: { icon: '≠', label: 'drifted' },
    failed: { icon: '✗', label: 'failed' },
    unknown: { icon: '?', label: 'unknown' },
  };
  const ORDER = ['synced', 'progressing', 'drifted', 'failed', 'unknown'];
  const main = document.getElementById('main');
  const live = document.getElementById('live');
  let current = null;
  let firstGrid = true;

  // h('a', {href: '#'}, 'text', child…): builds elements; text is always text, never HTML.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  // Replaces el's children; null, undefined and false are left out (replaceChildren would
  // print them as text).
  function fill(el, ...children) {
    el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  }

  const short = (rev) => (rev ? rev.split(':').pop().slice(0, 7) : '');
  const enc = encodeURIComponent;

  function ago(iso) {
    if (!iso) return 'never';
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (!Number.isFinite(s)) return iso;
    if (s < 5) return 'just now';
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  function badge(state, text) {
    const st = STATES[state] || STATES.unknown;
    return h('span', { class: `badge s-${state}`, dataset: { state } },
      h('span', { 'aria-hidden': 'true' }, st.icon), ' ', text || st.label);
  }

  async function getJSON(url) {
    const r = await fetch(url);
    const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
    if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
    return body;
  }

  function hashParts() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const i = raw.indexOf('?');
    return i < 0
      ? { path: raw, params: new URLSearchParams() }
      : { path: raw.slice(0, i), params: new URLSearchParams(raw.slice(i + 1)) };
  }

  // ------------------------------------------------------------------------------------------
  // Fleet overview
  // ------------------------------------------------------------------------------------------

  function fleetView(params) {
    const q = {
      selector: params.get('selector') || '',
      search: params.get('search') || '',
      state: params.get('state') || '',
      page: Number(params.get('page')) || 1,
      pageSize: Number(params.get('pageSize')) || 50,
    };
    let body;
    const sync = () => {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(q)) {
        if (v && !(k === 'page' && v === 1) && !(k === 'pageSize' && v === 50)) p.set(k, v);
      }
      const s = p.toString();
      history.replaceState(null, '', s ? `#/?${s}` : '#/');
      refresh();
    };
    let timer;
    const later = (fn) => { clearTimeout(timer); timer = setTimeout(fn, 250); };
    return {
      title: 'Fleet',
      url() {
        const p = new URLSearchParams({ page: q.page, pageSize: q.pageSize });
        if (q.selector) p.set('selector', q.selector);
        if (q.search) p.set('search', q.search);
        if (q.state) p.set('state', q.state);
        return `/api/v1/fleet?${p}`;
      },
      mount() {
        body = h('div', { id: 'fleet-body' }, h('p', { class: 'muted' }, 'Loading…'));
        fill(main, 
          h('h1', {}, 'Fleet overview'),
          h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter clusters', onsubmit: (e) => e.preventDefault() },
            h('label', {}, 'Label selector',
              h('input', { id: 'f-selector', type: 'text', placeholder: 'region=eu,tier!=canary', value: q.selector,
                spellcheck: 'false', autocomplete: 'off',
                oninput: (e) => later(() => { q.selector = e.target.value; q.page = 1; sync(); }) })),
            h('label', {}, 'Search',
              h('input', { id: 'f-search', type: 'search', placeholder: 'name, label or revision', value: q.search,
                oninput: (e) => later(() => { q.search = e.target.value; q.page = 1; sync(); }) })),
            h('label', {}, 'State',
              h('select', { id: 'f-state', onchange: (e) => { q.state = e.target.value; q.page = 1; sync(); } },
                h('option', { value: '' }, 'any'),
                ORDER.map((s) => h('option', { value: s, selected: q.state === s }, STATES[s].label)))),
            h('label', {}, 'Clusters per page',
              h('select', { id: 'f-size', onchange: (e) => { q.pageSize = Number(e.target.value); q.page = 1; sync(); } },
                [25, 50, 100, 200, 500].map((n) => h('option', { value: n, selected: q.pageSize === n }, n))))),
          body);
      },
      render(data) {
        document.getElementById('version').textContent = `flotilla hub ${data.hubVersion}`;
        const t = data.totals;
        const summary = h('ul', { class: 'summary', 'aria-label': 'Cells by state' },
          ORDER.map((s) => h('li', {}, badge(s, `${t.cells[s] || 0} ${STATES[s].label}`))));
        const cols = data.deliveries;
        const table = h('table', { class: 'grid', id: 'grid' },
          h('caption', {}, `Clusters × deliveries: ${t.matched} of ${t.clusters} clusters`,
            data.page.pages > 1 ? `, page ${data.page.number} of ${data.page.pages}` : '',
            '. Hover or focus a cell for revision, health, drift and the last error.'),
          h('thead', {}, h('tr', {},
            h('th', { scope: 'col' }, 'Cluster'),
            h('th', { scope: 'col' }, 'Agent'),
            cols.map((d) => h('th', { scope: 'col', dataset: { delivery: d.key } },
              h('a', { href: `#/deliveries/${enc(d.namespace)}/${enc(d.name)}` }, d.key),
              h('div', { class: 'labels' }, d.shortRevision ? `rev ${d.shortRevision.slice(0, 7)}` : 'no revision',
                d.summary ? ` · ${d.summary} ready` : '', d.suspended ? ' · suspended' : ''))))),
          h('tbody', {}, data.clusters.map((c) => clusterRow(c, cols))));
        const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' },
          h('button', { type: 'button', disabled: data.page.number <= 1, onclick: () => { q.page = 1; sync(); } }, '« First'),
          h('button', { type: 'button', disabled: data.page.number <= 1, onclick: () => { q.page = data.page.number - 1; sync(); } }, '‹ Previous'),
          h('span', { 'aria-live': 'polite' }, `Page ${data.page.number} of ${data.page.pages}`),
          h('button', { type: 'button', disabled: data.page.number >= data.page.pages, onclick: () => { q.page = data.page.number + 1; sync(); } }, 'Next ›'),
          h('button', { type: 'button', disabled: data.page.number >= data.page.pages, onclick: () => { q.page = data.page.pages; sync(); } }, 'Last »'));
        const empty = data.clusters.length === 0
          ? h('p', { class: 'muted' }, t.clusters === 0 ? 'No cluster is registered yet (flotilla cluster add NAME).' : 'No cluster matches the filter.')
          : null;
        fill(body, summary, h('div', { class: 'scroll' }, table), empty, pager);
        if (firstGrid) {
          firstGrid = false;
          // After the next paint: the moment the user sees the grid.
          requestAnimationFrame(() => setTimeout(() => {
            performance.mark('flotilla:grid-rendered');
            document.body.dataset.gridRendered = 'true';
          }, 0));
        }
      },
    };
  }

  function clusterRow(c, cols) {
    const labels = Object.entries(c.labels || {}).map(([k, v]) => `${k}=${v}`).join(' ');
    return h('tr', { dataset: { cluster: c.name } },
      h('th', { scope: 'row' },
        h('a', { href: `#/clusters/${enc(c.name)}` }, c.name),
        labels ? h('div', { class: 'labels' }, labels) : null),
      h('td', {},
        c.connected ? h('span', {}, h('span', { 'aria-hidden': 'true' }, '● '), 'connected')
          : h('span', { class: 'muted' }, h('span', { 'aria-hidden': 'true' }, '○ '), 'offline'),
        h('div', { class: 'labels' }, c.agentVersion ? `v${c.agentVersion} · ` : '', `seen ${ago(c.lastSeen)}`)),
      cols.map((d, i) => cell(c, d, c.cells[i], i)));
  }

  function cell(c, d, x, i) {
    if (!x) {
      return h('td', { class: 'cell s-none', dataset: { delivery: d.key, state: 'none' } },
        h('span', { class: 'none', 'aria-label': `${d.key} does not target ${c.name}` }, '—'));
    }
    const st = STATES[x.state] || STATES.unknown;
    const id = `tip-${c.name}-${i}`;
    const health = x.health || 'Unknown';
    const drift = x.drifted ? `${x.drifted} object${x.drifted === 1 ? '' : 's'} drifted` : 'none';
    const error = x.ready ? '' : (x.message || x.reason);
    const label = `${c.name}, ${d.key}: ${st.label}; revision ${short(x.revision) || 'none'}; health ${health}; drift ${drift}` +
      (error ? `; ${x.reason}: ${x.message}` : '');
    return h('td', { class: `cell s-${x.state}`, dataset: { delivery: d.key, state: x.state } },
      h('a', { href: `#/clusters/${enc(c.name)}`, 'aria-label': label, 'aria-describedby': id },
        h('span', { class: 'icon', 'aria-hidden': 'true' }, st.icon), ' ', st.label,
        h('span', { class: 'rev' }, short(x.revision) || '—', x.desiredRevision && x.desiredRevision !== x.revision ? ` → ${short(x.desiredRevision)}` : ''),
        h('span', { class: 'tip', role: 'tooltip', id },
          h('dl', {},
            h('dt', {}, 'Revision'), h('dd', {}, x.revision || 'none applied'),
            x.desiredRevision && x.desiredRevision !== x.revision ? [h('dt', {}, 'Wanted'), h('dd', {}, x.desiredRevision)] : null,
            h('dt', {}, 'Health'), h('dd', {}, health),
            h('dt', {}, 'Drift'), h('dd', {}, drift),
            h('dt', {}, 'State'), h('dd', {}, `${st.label} (${x.reason || 'no report'})`),
            error ? [h('dt', {}, 'Last error'), h('dd', {}, error)] : null))));
  }

  // ------------------------------------------------------------------------------------------
  // Cluster page
  // ------------------------------------------------------------------------------------------

  function clusterView(name) {
    return {
      title: `Cluster ${name}`,
      url: () => `/api/v1/clusters/${enc(name)}`,
      mount() { fill(main, h('p', { class: 'muted' }, `Loading cluster ${name}…`)); },
      render(c) {
        const ready = (c.conditions || []).find((x) => x.type === 'Ready');
        fill(main, 
          h('div', { class: 'crumbs' }, h('a', { href: '#/' }, 'Fleet'), ' / cluster'),
          h('h1', {}, c.name, badge(c.state)),
          h('dl', { class: 'facts' },
            h('dt', {}, 'Agent'), h('dd', {}, c.connected ? 'connected' : 'not connected', c.agentVersion ? `, version ${c.agentVersion}` : ''),
            h('dt', {}, 'Last seen'), h('dd', {}, c.lastSeen ? `${ago(c.lastSeen)} (${c.lastSeen})` : 'never'),
            h('dt', {}, 'Accepted'), h('dd', {}, c.revoked ? 'revoked' : c.accepted ? 'yes' : 'no (flotilla cluster accept)'),
            h('dt', {}, 'Labels'), h('dd', { class: 'mono' }, Object.entries(c.labels || {}).map(([k, v]) => `${k}=${v}`).join(', ') || 'none'),
            h('dt', {}, 'Revision'), h('dd', { class: 'mono' }, c.revision || 'none'),
            h('dt', {}, 'Deliveries ready'), h('dd', {}, c.summary || '0/0'),
            h('dt', {}, 'Drifted objects'), h('dd', {}, String(c.drifted)),
            ready ? [h('dt', {}, 'Ready'), h('dd', { class: 'message' }, `${ready.status} (${ready.reason}) ${ready.message}`)] : null),
          h('h2', {}, 'Deliveries'),
          c.deliveries.length === 0 ? h('p', { class: 'muted' }, 'No delivery targets this cluster.') :
            h('div', { class: 'scroll' }, h('table', { id: 'cluster-deliveries' },
              h('caption', {}, `Deliveries on ${c.name}`),
              h('thead', {}, h('tr', {}, ['Delivery', 'State', 'Applied', 'Wanted', 'Health', 'Drifted', 'Objects', 'Details']
                .map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, c.deliveries.map((d) => {
                const [ns, dn] = d.key.split('/');
                return h('tr', { dataset: { delivery: d.key } },
                  h('th', { scope: 'row' }, ns ? h('a', { href: `#/deliveries/${enc(ns)}/${enc(dn)}` }, d.key) : d.name),
                  h('td', {}, badge(d.state)),
                  h('td', { class: 'mono' }, short(d.revision) || '—'),
                  h('td', { class: 'mono' }, short(d.desiredRevision) || '—'),
                  h('td', {}, d.health || 'Unknown'),
                  h('td', {}, String(d.drifted)),
                  h('td', {}, String(d.objects)),
                  h('td', {}, h('div', { class: 'message' }, d.reason, d.message ? `: ${d.message}` : ''),
                    objectResults(d)));
              })))),
          h('h2', {}, 'Last drift events'),
          c.driftEvents.length === 0 ? h('p', { class: 'muted' }, 'No drift seen since the hub started.') :
            h('ul', { class: 'events', id: 'drift-events' }, c.driftEvents.map((e) => h('li', {},
              h('time', { datetime: e.at }, e.at), ' · ', h('strong', {}, e.delivery), ' · ',
              e.objects.length ? badge('drifted', `${e.objects.length} drifted: ${e.objects.join(', ')}`) : badge('synced', 'drift gone'),
              e.message ? h('div', { class: 'message muted' }, e.message) : null))));
      },
    };
  }

  function objectResults(d) {
    const parts = [];
    if (d.ack) {
      const failed = d.ack.objects.filter((o) => !o.ok).length;
      parts.push(h('details', {},
        h('summary', {}, `Bundle ${d.ack.sequence}: ${d.ack.outcome}, ${d.ack.objectCount} objects${failed ? `, ${failed} failed` : ''}`),
        d.ack.message ? h('p', { class: 'message' }, d.ack.message) : null,
        h('table', {}, h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Object'), h('th', { scope: 'col' }, 'Result'))),
          h('tbody', {}, d.ack.objects.map((o) => h('tr', {}, h('td', { class: 'mono' }, o.object),
            h('td', {}, o.ok ? badge('synced', 'applied') : badge('failed', 'failed'))))))));
    }
    if (d.report && d.report.drifted.length) {
      parts.push(h('div', { class: 'message' }, `Drifted now: ${d.report.drifted.join(', ')}`));
    }
    return parts;
  }

  // ------------------------------------------------------------------------------------------
  // Delivery page
  // ------------------------------------------------------------------------------------------

  function deliveryView(ns, name) {
    return {
      title: `Delivery ${ns}/${name}`,
      url: () => `/api/v1/deliveries/${enc(ns)}/${enc(name)}`,
      mount() { fill(main, h('p', { class: 'muted' }, `Loading delivery ${ns}/${name}…`)); },
      render(d) {
        const p = d.progress;
        const synced = p.states.synced || 0;
        fill(main, 
          h('div', { class: 'crumbs' }, h('a', { href: '#/' }, 'Fleet'), ' / delivery'),
          h('h1', {}, d.key, d.ready ? badge('synced', 'ready')
            : badge(p.states.failed ? 'failed' : p.states.drifted ? 'drifted' : 'progressing', d.reason || 'not ready')),
          d.message ? h('p', { class: 'message' }, d.message) : null,
          h('dl', { class: 'facts' },
            h('dt', {}, 'Source'), h('dd', {}, d.source.name, d.source.url ? ` (${d.source.url})` : '', d.source.exists ? '' : ' — missing'),
            h('dt', {}, 'Fetched'), h('dd', { class: 'mono' }, d.source.revision || 'nothing yet', d.source.ready || !d.source.message ? '' : ` — ${d.source.message}`),
            h('dt', {}, 'Path'), h('dd', { class: 'mono' }, d.path),
            h('dt', {}, 'Clusters'), h('dd', { class: 'mono' }, d.clusterSelector || 'every cluster'),
            h('dt', {}, 'Revision'), h('dd', { class: 'mono' }, d.revision || 'none'),
            h('dt', {}, 'Drift'), h('dd', {}, d.driftMode === 'Report' ? 'reported, not corrected' : 'corrected'),
            h('dt', {}, 'Prune'), h('dd', {}, d.prune ? 'yes' : 'no'),
            d.suspended ? [h('dt', {}, 'Suspended'), h('dd', {}, 'yes: new revisions are held back')] : null),
          h('h2', {}, 'Rollout'),
          h('p', {}, h('label', { for: 'rollout-progress' }, `${synced} of ${p.targeted} clusters synced (${p.percent}%) `),
            h('progress', { id: 'rollout-progress', max: Math.max(p.targeted, 1), value: synced }, `${p.percent}%`)),
          h('ul', { class: 'summary' }, ORDER.map((s) => h('li', {}, badge(s, `${p.states[s] || 0} ${STATES[s].label}`)))),
          d.partitions.length ? h('table', { id: 'partitions' }, h('caption', {}, 'Partitions, in rollout order'),
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Partition'), h('th', { scope: 'col' }, 'Synced'))),
            h('tbody', {}, d.partitions.map((x) => h('tr', {}, h('th', { scope: 'row' }, x.name), h('td', {}, `${x.synced}/${x.clusters}`))))) : null,
          h('h2', {}, 'Depends on'),
          d.dependsOn.length === 0 ? h('p', { class: 'muted' }, 'Nothing (no dependsOn).') :
            h('ul', { id: 'depends-on' }, d.dependsOn.map((x) => {
              const [dns, dname] = x.key.split('/');
              return h('li', {}, h('a', { href: `#/deliveries/${enc(dns)}/${enc(dname)}` }, x.key), ' ',
                !x.exists ? badge('failed', 'missing') : x.ready ? badge('synced', 'ready') : badge('progressing', x.reason || 'not ready'),
                x.summary ? ` ${x.summary} ready` : '',
                x.waitingClusters.length ? h('div', {}, `Waiting for it on: ${x.waitingClusters.join(', ')}`) : null);
            })),
          h('h2', {}, 'Errors'),
          d.errors.length === 0 ? h('p', { class: 'muted' }, 'None.') :
            h('ul', { class: 'events', id: 'delivery-errors' }, d.errors.map((e) => h('li', {},
              h('a', { href: `#/clusters/${enc(e.cluster)}` }, e.cluster), ' ', badge('failed', e.reason),
              h('div', { class: 'message mono' }, e.message)))),
          h('h2', {}, 'Clusters'),
          h('div', { class: 'scroll' }, h('table', { id: 'delivery-clusters' },
            h('caption', {}, `Clusters targeted by ${d.key}`),
            h('thead', {}, h('tr', {}, ['Cluster', 'State', 'Revision sent', 'Health', 'Drifted', 'Partition', 'Details']
              .map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, d.clusters.map((c) => h('tr', { dataset: { cluster: c.name } },
              h('th', { scope: 'row' }, h('a', { href: `#/clusters/${enc(c.name)}` }, c.name)),
              h('td', {}, badge(c.state)),
              h('td', { class: 'mono' }, short(c.revision) || '—'),
              h('td', {}, c.health || 'Unknown'),
              h('td', {}, String(c.drifted)),
              h('td', {}, c.partition || '—'),
              h('td', { class: 'message' }, c.reason, c.message ? `: ${c.message}` : '')))))));
      },
    };
  }

  // ------------------------------------------------------------------------------------------
  // Routing, loading, live updates
  // ------------------------------------------------------------------------------------------

  let loading = false;
  let again = false;
  async function refresh() {
    if (!current) return;
    if (loading) { again = true; return; }
    loading = true;
    const view = current;
    try {
      const data = await getJSON(view.url());
      if (view === current) {
        view.render(data);
        document.body.dataset.loaded = String(Date.now());
      }
    } catch (e) {
      if (view === current) {
        const old = document.getElementById('load-error');
        const box = h('p', { class: 'error', id: 'load-error', role: 'alert' }, `Could not load ${view.title}: ${e.message}`);
        if (old) old.replaceWith(box); else main.prepend(box);
      }
    } finally {
      loading = false;
      if (again) { again = false; refresh(); }
    }
  }

  function route() {
    const { path, params } = hashParts();
    let m;
    if ((m = path.match(/^\/clusters\/([^/]+)$/))) current = clusterView(decodeURIComponent(m[1]));
    else if ((m = path.match(/^\/deliveries\/([^/]+)\/([^/]+)$/))) current = deliveryView(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    else current = fleetView(params);
    document.title = `flotilla · ${current.title}`;
    document.body.dataset.view = path.split('/')[1] || 'fleet';
    current.mount();
    refresh();
  }

  function connect() {
    let opened = false;
    const es = new EventSource('/api/v1/events');
    es.addEventListener('hello', () => {
      live.textContent = 'live';
      live.className = 'live on';
      // After a reconnection (e.g. a hub restart) what is shown may be stale.
      if (opened) refresh();
      opened = true;
    });
    es.addEventListener('change', (e) => {
      document.body.dataset.seq = JSON.parse(e.data).seq;
      refresh();
    });
    es.onerror = () => {
      live.textContent = 'reconnecting…';
      live.className = 'live off';
    };
  }

  window.addEventListener('hashchange', route);
  route();
  connect();
})();
