/* The load generator's pages: the live page (--dashboard), report.html and compare.html.
 *
 * One renderer for all three, on top of the vendored uPlot (a global `uPlot`). It reads documents
 * built by loadgen/report_html.py: {kind, meta, records, actions, summary, spectrum}, where each
 * record is a loadgen.record.SecondRecord as JSON (one whole second of the run). The live page gets
 * the same pieces as Server-Sent Events (meta, second, action, end; see loadgen/dashboard.py) and,
 * at "end", swaps its live figures for the final ones: it then shows what report.html shows.
 *
 * No network use beyond the live page's own /events: report.html and compare.html inline this file.
 */
(function () {
  'use strict';

  const COLOURS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
    '#7f7f7f', '#bcbd22', '#17becf'];
  const LAT_SERIES = [['p50', '#2ca02c'], ['p90', '#1f77b4'], ['p99', '#ff7f0e'], ['p99.9', '#d62728'],
    ['max', '#7f7f7f']];
  const LAT_KEYS = ['mean', 'p50', 'p90', 'p99', 'p99.9', 'p99.99', 'max'];
  // Whole seconds on the time axis: a record is one second, a tick between two means nothing.
  const SECOND_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];

  // -- small DOM helpers ---------------------------------------------------------------------

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v);
    }
    for (const c of children || []) e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    return e;
  }

  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return '-';
    if (typeof v !== 'number') return String(v);
    if (digits === undefined) digits = Number.isInteger(v) ? 0 : (Math.abs(v) >= 100 ? 1 : 3);
    return v.toLocaleString('en-US', {minimumFractionDigits: 0, maximumFractionDigits: digits});
  }

  function pct(n, total) {
    return total ? (100 * n / total).toFixed(1) + ' %' : '-';
  }

  function table(head, rows, attrs) {
    const t = el('table', Object.assign({class: 'lg-table'}, attrs || {}));
    t.appendChild(el('thead', {}, [el('tr', {}, head.map(h => el('th', {text: h})))]));
    const body = el('tbody');
    for (const r of rows) body.appendChild(el('tr', {}, r.map(c => el('td', {text: c === undefined ? '-' : String(c)}))));
    t.appendChild(body);
    return t;
  }

  function section(title, content, wide) {
    return el('section', {class: wide ? 'lg-section lg-wide' : 'lg-section'}, [el('h2', {text: title}), content]);
  }

  function addCounts(into, counts) {
    for (const [k, n] of Object.entries(counts || {})) into[k] = (into[k] || 0) + n;
  }

  // -- charts ----------------------------------------------------------------------------------

  /* Vertical marks on the time axis: scenario stages (grey, dashed) and actions (red if failed). */
  function marksPlugin(getMarks) {
    return {
      hooks: {
        draw: [u => {
          const marks = getMarks();
          if (!marks.length) return;
          const ctx = u.ctx;
          const dpr = window.devicePixelRatio || 1;
          ctx.save();
          ctx.font = `${11 * dpr}px sans-serif`;
          ctx.textBaseline = 'top';
          let row = 0;
          for (const m of marks) {
            if (m.x === null || m.x === undefined) continue;
            const x = Math.round(u.valToPos(m.x, 'x', true));
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = m.colour;
            ctx.fillStyle = m.colour;
            ctx.lineWidth = dpr;
            ctx.setLineDash(m.dash ? [4 * dpr, 3 * dpr] : []);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.fillText(m.label, x + 3 * dpr, u.bbox.top + (2 + 13 * (row % 3)) * dpr);
            row += 1;
          }
          ctx.restore();
        }],
      },
    };
  }

  class Chart {
    /* A titled uPlot chart whose series can change (a backend appears): rebuilt when they do. */
    constructor(parent, name, title, opts) {
      this.name = name;
      this.title = title;
      this.opts = opts; // {yLabel, log, marks, xLabel, xValues}
      this.box = el('div', {class: 'lg-chart', 'data-chart': name});
      parent.appendChild(this.box);
      this.plot = null;
      this.key = '';
    }

    width() {
      return Math.max(320, (this.box.clientWidth || this.box.parentNode.clientWidth || 900) - 4);
    }

    set(series, data) {
      const key = series.map(s => s.label).join('\u0001');
      if (this.plot && key === this.key) {
        this.plot.setData(data);
        return;
      }
      if (this.plot) this.plot.destroy();
      this.key = key;
      const o = this.opts;
      const y = o.log ? {distr: 3} : {};
      const opts = {
        title: this.title,
        width: this.width(),
        height: 240,
        scales: {x: {time: false}, y: Object.assign({}, y, o.yRange ? {range: o.yRange} : {})},
        axes: [
          {label: o.xLabel || 'seconds into the run', values: o.xValues, incrs: o.xIncrs || SECOND_INCRS},
          {label: o.yLabel, size: 60},
        ],
        series: [{label: o.xName || 's'}].concat(series.map(s => ({
          label: s.label, stroke: s.colour, width: s.width || 1.5, dash: s.dash, scale: s.scale || 'y',
          spanGaps: !!o.spanGaps, points: {show: false},
          value: (u, v) => num(v),
        }))),
        legend: {show: true},
        cursor: {drag: {x: false, y: false}},
        plugins: o.marks ? [marksPlugin(o.marks)] : [],
      };
      // A series on a scale of its own (closed loop: the target in connections) gets a right axis.
      for (const sc of new Set(series.map(s => s.scale).filter(Boolean))) {
        opts.scales[sc] = {range: (u, min, max) => [0, Math.max(1, max) * 1.1]};
        opts.axes.push({scale: sc, side: 1, label: series.find(s => s.scale === sc).axisLabel || sc,
          size: 60, grid: {show: false}});
      }
      this.plot = new uPlot(opts, data, this.box);
    }

    resize() {
      if (this.plot) this.plot.setSize({width: this.width(), height: 240});
    }
  }

  function colourOf(i) {
    return COLOURS[i % COLOURS.length];
  }

  /* A log scale must not see zero: latencies of 0 ms (never in practice) become gaps. */
  function positive(v) {
    return v === null || v === undefined || v <= 0 ? null : v;
  }

  // -- one run: header, cards, charts, tables --------------------------------------------------

  class RunView {
    constructor(root, meta, live) {
      this.root = root;
      this.meta = meta || {};
      this.live = live;
      this.records = [];
      this.actions = [];
      this.summary = null;
      this.spectrum = null;
      this.finished = !live;
      root.textContent = '';
      root.classList.add('lg-page');
      this.header = el('header', {class: 'lg-header'});
      this.cards = el('div', {class: 'lg-cards'});
      this.charts = el('div', {class: 'lg-charts'});
      this.tables = el('div', {class: 'lg-tables'});
      root.append(this.header, this.cards, this.charts, this.tables);
      const marks = () => this.marks();
      this.throughput = new Chart(this.charts, 'throughput', 'Throughput (responses/s) and failures/s',
        {yLabel: 'per second', marks});
      this.latency = new Chart(this.charts, 'latency', 'Latency per second (ms, log scale)',
        {yLabel: 'ms', log: true, marks});
      this.backends = new Chart(this.charts, 'backends', 'Share of responses per backend (X-Backend-Id)',
        {yLabel: '%', marks, yRange: [0, 100]});
      this.spectrumChart = null;
      window.addEventListener('resize', () => this.charts_().forEach(c => c.resize()));
      this.render();
    }

    charts_() {
      return [this.throughput, this.latency, this.backends, this.spectrumChart].filter(Boolean);
    }

    openLoop() {
      return this.meta.mode === 'open';
    }

    marks() {
      const out = [];
      for (const s of this.meta.stages || []) {
        const level = s.kind === 'ramp' ? `${num(s.from)}\u2192${num(s.to)}` : num(s.to);
        out.push({x: s.start_s, label: `${s.kind} ${level}`, colour: '#888', dash: true});
      }
      const done = new Set();
      for (const a of this.actions) {
        done.add(`${a.kind} ${a.target} ${a.planned_at_s}`);
        const x = a.at_s === null || a.at_s === undefined ? a.planned_at_s : a.at_s;
        out.push({x, label: `${a.kind} ${a.target}${a.ok ? '' : ' (failed)'}`, colour: a.ok ? '#c00' : '#f0a'});
      }
      for (const w of (this.summary && this.summary.workers) || []) {
        if (w.lost_at_s !== null && w.lost_at_s !== undefined) {
          out.push({x: w.lost_at_s, label: `lost ${w.name}`, colour: '#f0a'});
        }
      }
      for (const a of this.meta.planned_actions || []) {
        if (!done.has(`${a.kind} ${a.target} ${a.at_s}`) && !this.finished) {
          out.push({x: a.at_s, label: `${a.kind} ${a.target} (planned)`, colour: '#e99', dash: true});
        }
      }
      return out;
    }

    addRecord(r) {
      // A record for a second already shown replaces it: a revision, brought up to date by the
      // responses that came in late (loadgen.record.TickMerger.revised).
      let i = this.records.length - 1;
      while (i >= 0 && this.records[i].second > r.second) i -= 1;
      if (i >= 0 && this.records[i].second === r.second) this.records[i] = r;
      else this.records.splice(i + 1, 0, r);
      this.render();
    }

    addAction(a) {
      this.actions.push(a);
      this.render();
    }

    final(doc) {
      this.meta = doc.meta || this.meta;
      this.records = doc.records || [];
      this.actions = doc.actions || [];
      this.summary = doc.summary || null;
      this.spectrum = doc.spectrum || null;
      this.finished = true;
      this.render();
    }

    render() {
      this.renderHeader();
      this.renderCards();
      this.renderCharts();
      this.renderTables();
      this.root.dataset.seconds = String(this.records.length);
      this.root.dataset.finished = String(this.finished);
    }

    renderHeader() {
      const m = this.meta;
      const load = m.mode === 'open'
        ? `open loop, ${m.scenario ? 'peak ' : ''}${num(m.rate)} req/s intended, up to ${num(m.connections)} connections`
        : `closed loop, ${m.scenario ? 'peak ' : ''}${num(m.concurrency)} connections`;
      const tags = Object.entries(m.tags || {}).map(([k, v]) => `${k}=${v}`).join(', ');
      const status = this.finished
        ? (this.live ? 'finished: final figures' : 'finished')
        : `running: ${this.records.length} s of ${num(m.duration_s)} s`;
      this.header.textContent = '';
      this.header.append(
        el('h1', {text: `loadgen: ${m.scenario || `${m.method || ''} ${m.url || ''}`}`}),
        el('p', {class: 'lg-meta'}, [
          `${m.method || ''} ${m.url || ''} \u00b7 ${load} \u00b7 ${num(m.workers)} worker(s)`
          + (tags ? ` \u00b7 ${tags}` : '') + (m.started_at ? ` \u00b7 started ${m.started_at}` : ''),
        ]),
        el('p', {id: 'lg-status', class: this.finished ? 'lg-done' : 'lg-running', text: status}),
      );
    }

    renderCards() {
      const last = this.records.length ? this.records[this.records.length - 1] : null;
      let requests = 0; let failed = 0;
      for (const r of this.records) { requests += r.requests; failed += r.failed; }
      const s = this.summary;
      const cards = [
        ['rps', this.finished && s ? 'req/s (run)' : 'req/s (last second)', num(this.finished && s ? s.rps : last && last.rps)],
        ['p99', this.finished && s ? 'p99 ms (run)' : 'p99 ms (last second)',
          num(this.finished && s ? (s.latency_ms || {}).p99 : last && last.latency_ms.p99)],
        ['requests', 'requests', num(s ? s.requests : requests)],
        ['failed', 'failed', num(s ? s.failed : failed)],
      ];
      if (last && last.note) cards.push(['note', 'generator', last.note]);
      this.cards.textContent = '';
      for (const [id, label, value] of cards) {
        this.cards.appendChild(el('div', {class: 'lg-card', id: `lg-card-${id}`}, [
          el('div', {class: 'lg-card-value', text: value}), el('div', {class: 'lg-card-label', text: label}),
        ]));
      }
    }

    renderCharts() {
      const rs = this.records;
      const x = rs.map(r => r.second);
      const open = this.openLoop();
      const tput = [{label: 'req/s', colour: '#1f77b4'}, {label: 'failed/s', colour: '#d62728'}];
      const tdata = [x, rs.map(r => r.rps), rs.map(r => r.failed)];
      if (rs.some(r => r.target !== null && r.target !== undefined) && (open || this.meta.scenario)) {
        // Open loop: the intended rate, on the same axis. A closed-loop scenario: its level is a
        // number of connections, drawn against an axis of its own on the right.
        tput.push(open ? {label: 'target req/s', colour: '#999', dash: [6, 4], width: 1}
          : {label: 'target connections', colour: '#999', dash: [6, 4], width: 1, scale: 'conn',
            axisLabel: 'connections'});
        tdata.push(rs.map(r => r.target));
      }
      this.throughput.set(tput, tdata);
      const lat = LAT_SERIES.map(([k, c]) => ({label: k, colour: c}));
      const ldata = [x].concat(LAT_SERIES.map(([k]) => rs.map(r => positive(r.latency_ms[k]))));
      if (open) {
        lat.push({label: 'p99 uncorrected', colour: '#ff7f0e', dash: [5, 3]});
        ldata.push(rs.map(r => positive(r.uncorrected_p99_ms)));
      }
      this.latency.set(lat, ldata);
      const names = [...new Set(rs.flatMap(r => Object.keys(r.backends || {})))].sort();
      const bseries = names.map((n, i) => ({label: n, colour: colourOf(i)}));
      const bdata = [x].concat(names.map(n => rs.map(r => {
        const total = Object.values(r.backends || {}).reduce((a, b) => a + b, 0);
        return total ? 100 * (r.backends[n] || 0) / total : null;
      })));
      this.backends.set(bseries.length ? bseries : [{label: '(no X-Backend-Id)', colour: '#ccc'}],
        bseries.length ? bdata : [x, rs.map(() => null)]);
      if (this.spectrum && (this.spectrum.corrected || []).length) {
        if (!this.spectrumChart) {
          this.spectrumChart = new Chart(this.charts, 'spectrum', 'Latency by percentile, whole run (HDR)',
            spectrumOpts());
        }
        const series = [{label: open ? 'corrected' : 'latency', colour: '#1f77b4'}];
        const curves = [this.spectrum.corrected];
        if (open && (this.spectrum.uncorrected || []).length) {
          series.push({label: 'uncorrected', colour: '#ff7f0e', dash: [5, 3]});
          curves.push(this.spectrum.uncorrected);
        }
        this.spectrumChart.set(series, spectrumData(curves));
      }
    }

    renderTables() {
      const t = this.tables;
      t.textContent = '';
      const s = this.summary;
      if (s) t.appendChild(section('Summary', this.summaryTable(s), true));
      const status = {}; const errors = {}; const backends = {};
      for (const r of this.records) {
        addCounts(status, r.status); addCounts(errors, r.errors_by_kind); addCounts(backends, r.backends);
      }
      const st = s ? s.status || {} : status;
      const er = s ? s.errors || {} : errors;
      const bk = s ? s.backends || {} : backends;
      const responses = Object.values(st).reduce((a, b) => a + b, 0);
      t.appendChild(section('Status codes', table(['status', 'count', '%'],
        Object.keys(st).sort().map(k => [k, num(st[k]), pct(st[k], responses)]), {id: 'lg-status-table'})));
      t.appendChild(section('Transport errors', table(['kind', 'count'],
        Object.keys(er).map(k => [k, num(er[k])]), {id: 'lg-errors-table'})));
      const btotal = Object.values(bk).reduce((a, b) => a + b, 0);
      t.appendChild(section('Backends', table(['backend', 'responses', 'share'],
        Object.keys(bk).sort().map(k => [k, num(bk[k]), pct(bk[k], btotal)]), {id: 'lg-backends-table'})));
      t.appendChild(section('By request kind', this.kindsTable(s), true));
      const fleet = (s && s.workers) || [];
      if (fleet.length) {
        t.appendChild(section('Workers (distributed run)', table(
          ['worker', 'status', 'requests', 'failed', 'req/s', 'p50 ms', 'p99 ms'],
          fleet.map(w => [w.name, w.status + (w.lost_at_s !== null && w.lost_at_s !== undefined
            ? ` at ${num(w.lost_at_s, 1)} s` : ''), num(w.requests), num(w.failed), num(w.rps),
          num(w.p50_ms), num(w.p99_ms)]), {id: 'lg-fleet-table'}), true));
      }
      const workers = this.records.length ? this.records[this.records.length - 1].workers || [] : [];
      if (workers.length && !this.finished) {
        t.appendChild(section('Workers (last second)', table(['worker', 'req/s', 'failed', 'p99 ms'],
          workers.map(w => [w.name, num(w.rps), num(w.failed), num(w.p99_ms)]), {id: 'lg-workers-table'})));
      }
      if (this.actions.length || (this.meta.planned_actions || []).length) {
        const rows = this.actions.length
          ? this.actions.map(a => [num(a.at_s, 2), a.kind, a.target, a.ok ? 'yes' : 'no', a.detail || ''])
          : this.meta.planned_actions.map(a => [`${num(a.at_s, 2)} (planned)`, a.kind, a.target, '-', '']);
        t.appendChild(section('Actions', table(['at (s)', 'action', 'target', 'ok', 'detail'], rows,
          {id: 'lg-actions-table'}), true));
      }
    }

    summaryTable(s) {
      const rows = [
        ['requests', num(s.requests)], ['responses', num(s.responses)],
        ['failed', `${num(s.failed)} (${pct(s.failed, s.requests)})`], ['req/s', num(s.rps)],
        ['duration', `${num(s.duration_s)} s asked, ${num(s.elapsed_s)} s measured`],
      ];
      const rc = s.rate_check;
      if (rc) {
        rows.push(['rate check', `intended ${num(rc.intended_rps)} req/s, achieved ${num(rc.achieved_rps)} `
          + `(${rc.kept_up ? 'kept up' : 'BEHIND'}${rc.reason ? ': ' + rc.reason : ''})`]);
      }
      const wrap = el('div', {id: 'lg-summary'});
      wrap.appendChild(table(['run', ''], rows, {id: 'lg-summary-table'}));
      const lrows = [[this.openLoop() ? 'corrected' : 'all responses']
        .concat(LAT_KEYS.map(k => num((s.latency_ms || {})[k])))];
      if (this.openLoop()) lrows.push(['uncorrected'].concat(LAT_KEYS.map(k => num((s.latency_uncorrected_ms || {})[k]))));
      wrap.appendChild(table(['latency (ms)'].concat(LAT_KEYS), lrows, {id: 'lg-latency-table'}));
      return wrap;
    }

    kindsTable(s) {
      const head = ['request', 'requests', 'failed', 'failed %', 'p50 ms', 'p99 ms'];
      if (s && s.by_request) {
        return table(head, Object.entries(s.by_request).map(([k, e]) => [k, num(e.requests), num(e.failed),
          pct(e.failed, e.requests), num((e.latency_ms || {}).p50), num((e.latency_ms || {}).p99)]),
        {id: 'lg-kinds-table'});
      }
      // Live: counts so far; latency of the last second (a run-wide percentile needs the histograms).
      const kinds = {};
      for (const r of this.records) {
        const entries = Object.keys(r.by_request || {}).length
          ? r.by_request : {[(this.meta.mix || ['requests'])[0]]: {requests: r.requests, failed: r.failed,
            p50_ms: r.latency_ms.p50, p99_ms: r.latency_ms.p99}};
        for (const [k, e] of Object.entries(entries)) {
          const into = kinds[k] || (kinds[k] = {requests: 0, failed: 0});
          into.requests += e.requests; into.failed += e.failed; into.p50 = e.p50_ms; into.p99 = e.p99_ms;
        }
      }
      return table(['request', 'requests', 'failed', 'failed %', 'p50 ms (last s)', 'p99 ms (last s)'],
        Object.entries(kinds).map(([k, e]) => [k, num(e.requests), num(e.failed), pct(e.failed, e.requests),
          num(e.p50), num(e.p99)]), {id: 'lg-kinds-table'});
    }
  }

  // -- the HDR spectrum: x is 1/(1-p) on a log axis, as HdrHistogram's plots draw it ---------------

    function spectrumX(p) {
    return Math.min(6, -Math.log10(Math.max(1e-6, 1 - p / 100)));
  }

  function spectrumOpts() {
    return {
      yLabel: 'ms', log: true, xLabel: 'percentile', xName: 'percentile', xIncrs: [1], spanGaps: true,
      xValues: (u, splits) => splits.map(v => {
        const p = 100 * (1 - Math.pow(10, -v));
        return p <= 0 ? '0%' : `${+p.toPrecision(Math.max(2, Math.round(v) + 1))}%`;
      }),
    };
  }

  /* Several curves of (percentile, ms) points on one shared x: a union of their x values. */
  function spectrumData(curves) {
    const xs = [...new Set(curves.flatMap(c => c.map(([p]) => spectrumX(p))))].sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const cols = curves.map(c => {
      const col = new Array(xs.length).fill(null);
      for (const [p, ms] of c) col[index.get(spectrumX(p))] = positive(ms);
      return col;
    });
    return [xs].concat(cols);
  }

  // -- compare: several runs overlaid ----------------------------------------------------------

  function renderCompare(root, doc) {
    root.textContent = '';
    root.classList.add('lg-page');
    const runs = doc.runs || [];
    root.appendChild(el('header', {class: 'lg-header'}, [
      el('h1', {text: `loadgen compare: ${runs.length} runs`}),
      el('p', {class: 'lg-meta', text: doc.differs && doc.differs.length
        ? `labelled by what differs: ${doc.differs.join(', ')}` : 'the runs differ in no setting the reports record'}),
    ]));
    root.appendChild(section('Runs', table(['label', 'run', 'started', 'url'],
      runs.map(r => [r.label, r.name, r.meta.started_at || '-', r.meta.url || '-']), {id: 'lg-runs-table'})));
    const charts = el('div', {class: 'lg-charts'});
    root.appendChild(charts);
    const seconds = [...new Set(runs.flatMap(r => r.records.map(x => x.second)))].sort((a, b) => a - b);
    const column = (run, f) => {
      const by = new Map(run.records.map(x => [x.second, x]));
      return seconds.map(s => (by.has(s) ? f(by.get(s)) : null));
    };
    const series = runs.map((r, i) => ({label: r.label, colour: colourOf(i)}));
    const created = [];
    const tput = new Chart(charts, 'throughput', 'Throughput (responses/s)', {yLabel: 'per second'});
    tput.set(series, [seconds].concat(runs.map(r => column(r, x => x.rps))));
    const p99 = new Chart(charts, 'latency', 'p99 latency per second (ms, log scale)', {yLabel: 'ms', log: true});
    p99.set(series, [seconds].concat(runs.map(r => column(r, x => positive(x.latency_ms.p99)))));
    const failed = new Chart(charts, 'failed', 'Failed requests per second', {yLabel: 'per second'});
    failed.set(series, [seconds].concat(runs.map(r => column(r, x => x.failed))));
    created.push(tput, p99, failed);
    // Tests read what was drawn from here (the charts' data), as from a RunView.
    window.LoadgenPage.view = {throughput: tput, latency: p99, failed};
    if (runs.some(r => (r.spectrum.corrected || []).length)) {
      const spec = new Chart(charts, 'spectrum', 'Latency by percentile, whole run (HDR)', spectrumOpts());
      spec.set(series, spectrumData(runs.map(r => r.spectrum.corrected || [])));
      created.push(spec);
    }
    window.addEventListener('resize', () => created.forEach(c => c.resize()));
    const metrics = [
      ['req/s', s => s.rps], ['requests', s => s.requests], ['failed', s => s.failed],
      ['failed %', s => (s.requests ? +(100 * s.failed / s.requests).toFixed(3) : null)],
    ].concat(['p50', 'p90', 'p99', 'p99.9', 'max'].map(k => [`${k} ms`, s => (s.latency_ms || {})[k]]))
      .concat([['p99 ms uncorrected', s => (s.latency_uncorrected_ms || {}).p99]]);
    const rows = metrics.map(([name, f]) => [name].concat(runs.map(r => num(f(r.summary)))));
    root.appendChild(section('Summary', table(['metric'].concat(runs.map(r => r.label)), rows,
      {id: 'lg-compare-table'})));
    root.dataset.runs = String(runs.length);
    root.dataset.finished = 'true';
  }

  // -- entry points ------------------------------------------------------------------------------

  function live(root, url) {
    let view = null;
    const es = new EventSource(url);
    const page = window.LoadgenPage;
    es.addEventListener('meta', ev => { view = new RunView(root, JSON.parse(ev.data), true); page.view = view; });
    es.addEventListener('second', ev => { if (view) view.addRecord(JSON.parse(ev.data)); });
    es.addEventListener('action', ev => { if (view) view.addAction(JSON.parse(ev.data)); });
    es.addEventListener('end', ev => {
      es.close(); // the run is over and its server is going away: do not reconnect
      if (view) view.final(JSON.parse(ev.data));
    });
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) return;
      const status = document.getElementById('lg-status');
      if (status && view && !view.finished) status.textContent += ' (reconnecting...)';
    };
    return es;
  }

  function report(root, doc) {
    const view = new RunView(root, doc.meta, false);
    view.final(doc);
    window.LoadgenPage.view = view;
    return view;
  }

  function data(id) {
    return JSON.parse(document.getElementById(id).textContent);
  }

  window.LoadgenPage = {live, report, compare: renderCompare, data, view: null};
})();
