// The script of derpbench's report page (inlined by bench/report.cc after Chart.js): draws the
// charts from the JSON in #derpbench-data and, after Chart.js has laid each chart out, writes the
// chart as text under it (title, axis titles, the tick labels Chart.js computed, legend entries,
// the knee labels actually drawn), so that the chart is readable without the canvas: by screen
// readers, by copy and paste, and by the test that checks what Chart.js drew.
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('derpbench-data').textContent);
  const holder = document.getElementById('charts');
  document.getElementById('no-script').hidden = true;
  const markers = ['circle', 'triangle', 'rect', 'rectRot', 'crossRot', 'cross'];
  const lossFloor = 0.001; // % : loss below this (and none) is drawn on the axis floor

  function compact(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return parseFloat((v / 1e9).toPrecision(3)) + 'G';
    if (a >= 1e6) return parseFloat((v / 1e6).toPrecision(3)) + 'M';
    if (a >= 1e3) return parseFloat((v / 1e3).toPrecision(3)) + 'k';
    return String(parseFloat(v.toPrecision(3)));
  }
  // Log-axis ticks at 1, 2 and 5 of each decade only (Chart.js offers every integer multiple).
  function oneTwoFive(v) {
    const m = v / Math.pow(10, Math.floor(Math.log10(v)));
    return [1, 2, 5].some((k) => Math.abs(m - k) < 1e-9) ? compact(v) : null;
  }
  function grouped(v) { return Math.round(v).toLocaleString('en-US'); }
  function axis(title, extra) {
    return Object.assign({ type: 'linear', title: { display: true, text: title, font: { weight: 'bold' } },
                           ticks: { callback: (v) => compact(v) } }, extra || {});
  }

  // Writes the knee labels next to their markers and remembers what it drew, for the text twin.
  const kneeLabels = {
    id: 'kneeLabels',
    afterDatasetsDraw(chart) {
      const ctx = chart.ctx;
      const drawn = [];
      const boxes = []; // labels already placed: a knee at the same spot goes below the last
      const overlaps = (b) => boxes.some((o) => b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h);
      chart.data.datasets.forEach((ds, i) => {
        if (!ds.kneeLabels || !chart.isDatasetVisible(i)) return;
        chart.getDatasetMeta(i).data.forEach((point, j) => {
          const text = ds.kneeLabels[j];
          const area = chart.chartArea;
          if (point.x < area.left || point.x > area.right || point.y < area.top || point.y > area.bottom) return;
          ctx.save();
          ctx.font = 'bold 12px sans-serif';
          ctx.fillStyle = ds.borderColor;
          const width = ctx.measureText(text).width;
          // Left of the marker when it would run past the right edge.
          // The first free place near the marker: right of it (left near the right edge), then
          // further up or down, then on the other side.
          const right = point.x + 12 + width <= area.right;
          let box = null;
          for (const side of [right, !right]) {
            for (let step = 0; step <= 16 && !box; step++) {
              const dy = (step % 2 === 0 ? 1 : -1) * Math.ceil(step / 2) * 15;
              const candidate = { x: side ? point.x + 12 : point.x - 12 - width, y: point.y - 20 + dy, w: width, h: 14 };
              if (candidate.y >= area.top && candidate.y + candidate.h <= area.bottom && candidate.x >= area.left &&
                  candidate.x + width <= area.right && !overlaps(candidate)) box = candidate;
            }
          }
          box = box || { x: right ? point.x + 12 : point.x - 12 - width, y: Math.max(area.top, point.y - 20), w: width, h: 14 };
          boxes.push(box);
          // A thin leader from the label to its marker when the label moved away.
          if (Math.abs(box.y + 7 - point.y) > 16) {
            ctx.strokeStyle = ds.borderColor;
            ctx.lineWidth = 0.75;
            ctx.beginPath();
            ctx.moveTo(point.x, point.y);
            ctx.lineTo(box.x + (box.x > point.x ? 0 : width), box.y + 7);
            ctx.stroke();
          }
          ctx.textBaseline = 'top';
          ctx.fillText(text, box.x, box.y);
          ctx.restore();
          drawn.push(text);
        });
      });
      chart.$kneeLabelsDrawn = drawn;
    },
  };

  // The chart as text, from the chart object after layout.
  const textTwin = {
    id: 'textTwin',
    afterRender(chart) {
      const twin = chart.$twin;
      if (!twin) return;
      const lines = [['twin-title', chart.options.plugins.title.text]];
      for (const id of Object.keys(chart.scales)) {
        const scale = chart.scales[id];
        const ticks = scale.ticks.map((t) => [].concat(t.label).join(' ')).filter((l) => l !== '');
        lines.push(['twin-axis', `${scale.axis} axis "${scale.options.title.text}": ticks ${ticks.join(', ')}`, id]);
      }
      const legend = chart.legend && chart.legend.legendItems ? chart.legend.legendItems.map((i) => i.text) : [];
      if (legend.length > 0) lines.push(['twin-legend', 'legend: ' + legend.join('; ')]);
      for (const k of chart.$kneeLabelsDrawn || []) lines.push(['twin-knee', k]);
      twin.replaceChildren(twin.firstChild);
      for (const [cls, text, axisId] of lines) {
        const p = document.createElement('p');
        p.className = cls;
        if (axisId) p.dataset.axis = axisId;
        p.textContent = text;
        twin.appendChild(p);
      }
      chart.$twinWritten = true;
    },
  };

  let rendered = 0;
  function figure(id, title, caption, wide, config) {
    const fig = document.createElement('figure');
    fig.id = 'chart-' + id;
    if (wide) fig.className = 'wide';
    holder.appendChild(fig);
    if (!config) {
      fig.innerHTML = `<h3></h3><p class="note"></p>`;
      fig.querySelector('h3').textContent = title;
      fig.querySelector('p').textContent = caption;
      return;
    }
    const box = document.createElement('div');
    box.className = 'chart-box';
    // Room for the legend below the plot: about one entry per line in a half-width chart.
    const entries = config.data.datasets.filter((d) => !d.legendHide).length;
    box.style.height = `${Math.max(380, 320 + (wide ? 8 : 22) * entries)}px`;
    const canvas = document.createElement('canvas');
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', title);
    box.appendChild(canvas);
    fig.appendChild(box);
    const cap = document.createElement('figcaption');
    cap.textContent = caption;
    fig.appendChild(cap);
    const twin = document.createElement('details');
    twin.className = 'twin';
    twin.dataset.chart = id;
    twin.innerHTML = '<summary>This chart as text</summary>';
    fig.appendChild(twin);
    config.options = Object.assign({ animation: false, responsive: true, maintainAspectRatio: false,
                                     interaction: { mode: 'nearest', intersect: false } }, config.options);
    config.options.plugins = Object.assign({
      title: { display: true, text: title, font: { size: 14 } },
      legend: { position: 'bottom', labels: { usePointStyle: true, filter: (item, d) => !d.datasets[item.datasetIndex].legendHide } },
    }, config.options.plugins || {});
    config.plugins = [kneeLabels, textTwin];
    const chart = new Chart(canvas, config);
    chart.$twin = twin;
    chart.render();
    rendered++;
  }

  // ---- delivered against offered, packets/s, with loss on its own (right, log) axis ----
  function deliveredChart(unit) {
    const pps = unit === 'pps';
    const key = pps ? '_pps' : '_gbps';
    const datasets = [];
    let xmax = 0;
    for (const run of data.runs) {
      run.series.forEach((s, i) => {
        const marker = markers[i % markers.length];
        const points = s.points.map((p) => ({ x: p['offered' + key], y: p['delivered' + key] }));
        for (const p of points) xmax = Math.max(xmax, p.x, p.y);
        datasets.push({ label: `${run.label} — ${s.name}`, data: points, showLine: true, borderColor: run.colour,
                        backgroundColor: run.colour, pointStyle: marker, pointRadius: 4, borderWidth: 2 });
        if (pps)
          datasets.push({ label: `${run.label} — ${s.name} loss`, legendHide: true, yAxisID: 'loss', showLine: true,
                          data: s.points.map((p) => ({ x: p.offered_pps, y: Math.max(p.loss_pct, lossFloor) })),
                          borderColor: run.colour, backgroundColor: run.colour, borderDash: [6, 4], borderWidth: 1.5,
                          pointStyle: marker, pointRadius: 3 });
        if (s.knee && s.knee['offered' + key] > 0) {
          const label = pps ? `knee: ${grouped(s.knee.delivered_pps)} pkt/s (${s.name})`
                            : `knee: ${s.knee.delivered_gbps.toFixed(2)} Gbit/s (${s.name})`;
          datasets.push({ label: label, legendHide: true, kneeLabels: [label], pointStyle: 'star', pointRadius: 11,
                          borderWidth: 2, borderColor: run.colour, backgroundColor: run.colour,
                          data: [{ x: s.knee['offered' + key], y: s.knee['delivered' + key] }] });
        }
      });
    }
    if (datasets.length === 0) return null;
    datasets.push({ label: 'delivered = offered', data: [{ x: 0, y: 0 }, { x: xmax, y: xmax }], showLine: true,
                    borderColor: '#999', borderWidth: 1, pointRadius: 0 });
    const scales = { x: axis(pps ? 'offered load (packets/s)' : 'offered load (Gbit/s)', { min: 0 }),
                     y: axis(pps ? 'delivered (packets/s)' : 'delivered (Gbit/s)', { min: 0 }) };
    if (pps) {
      datasets.push({ label: '1 % loss (right axis)', yAxisID: 'loss', data: [{ x: 0, y: 1 }, { x: xmax, y: 1 }],
                      showLine: true, borderColor: '#c00', borderDash: [3, 3], borderWidth: 1.5, pointRadius: 0 });
      scales.loss = axis('loss (%, log scale)', {
        type: 'logarithmic', position: 'right', min: lossFloor, max: 100, grid: { drawOnChartArea: false },
        ticks: { callback: (v) => {
          const decade = Math.log10(v);
          if (Math.abs(decade - Math.round(decade)) > 1e-9) return null;
          return v <= lossFloor ? `≤${v} %` : `${v} %`;
        } },
      });
    }
    if (!pps) scales.x.ticks = { callback: (v) => String(parseFloat(v.toPrecision(3))) };
    if (!pps) scales.y.ticks = { callback: (v) => String(parseFloat(v.toPrecision(3))) };
    return { type: 'scatter', data: { datasets }, options: { scales } };
  }

  function cpuChart() {
    const datasets = [];
    for (const run of data.runs)
      run.series.forEach((s, i) => {
        const points = s.points.filter((p) => p.cpu_s_per_gbit !== undefined && p.delivered_gbps > 0)
          .map((p) => ({ x: p.delivered_gbps, y: p.cpu_s_per_gbit }));
        if (points.length > 0)
          datasets.push({ label: `${run.label} — ${s.name}`, data: points, showLine: true, borderColor: run.colour,
                          backgroundColor: run.colour, pointStyle: markers[i % markers.length], pointRadius: 4 });
      });
    if (datasets.length === 0) return null;
    return { type: 'scatter', data: { datasets }, options: { scales: {
      x: axis('delivered (Gbit/s)', { min: 0, ticks: { callback: (v) => String(parseFloat(v.toPrecision(3))) } }),
      y: axis('server CPU (s per Gbit, log scale)', { type: 'logarithmic', ticks: { callback: oneTwoFive } }) } } };
  }

  function rttChart() {
    const datasets = [];
    for (const run of data.runs) {
      const sizes = [...new Set(run.latency.map((l) => l.size))];
      sizes.forEach((size, i) => {
        const rows = run.latency.filter((l) => l.size === size).sort((a, b) => a.background_pps - b.background_pps);
        for (const [key, name, dash] of [['p50_us', 'p50', []], ['p99_us', 'p99', [6, 4]], ['p999_us', 'p99.9', [2, 3]]])
          datasets.push({ label: name === 'p50' ? `${run.label} — ${size}` : `${run.label} — ${size} ${name}`,
                          legendHide: name !== 'p50', showLine: true, borderDash: dash, borderColor: run.colour,
                          backgroundColor: run.colour, pointStyle: markers[i % markers.length], pointRadius: 4,
                          data: rows.map((l) => ({ x: l.background_pps, y: Math.max(l[key], 1) })) });
      });
    }
    if (datasets.length === 0) return null;
    return { type: 'scatter', data: { datasets }, options: { scales: {
      x: axis('background load delivered (packets/s)', { min: 0 }),
      y: axis('round trip (µs, log scale)', { type: 'logarithmic', ticks: { callback: oneTwoFive } }) } } };
  }

  function memoryChart() {
    const runs = data.runs.filter((r) => r.bytes_per_connection !== null);
    if (runs.length === 0) return null;
    return { type: 'bar', data: { labels: runs.map((r) => r.label), datasets: [{
      label: 'server RSS per idle connection', data: runs.map((r) => r.bytes_per_connection),
      backgroundColor: runs.map((r) => r.colour) }] },
      options: { plugins: { legend: { display: false } }, scales: {
        x: { title: { display: true, text: 'run', font: { weight: 'bold' } } },
        y: axis('server RSS per idle connection (bytes)', { min: 0 }) } } };
  }

  const charts = [
    ['delivered-pps', 'Delivered against offered load (packets/s)', 'Solid: delivered; dashed: loss on the right axis (log; no loss is drawn at the floor); red dashes: 1 % loss; stars: each sweep\'s knee.', true, deliveredChart('pps')],
    ['delivered-gbps', 'Delivered against offered load (Gbit/s)', 'The same probes in bits; stars: the knees.', false, deliveredChart('gbps')],
    ['cpu-per-gbit', 'Server CPU per Gbit delivered', 'From the server\'s /proc times over each probe (derpbench --server-pid).', false, cpuChart()],
    ['rtt', 'Round trip against load', 'Solid: p50 (named in the legend); dashed: p99; dotted: p99.9 (derpbench latency --rate).', false, rttChart()],
    ['memory', 'Memory per idle connection', 'Server RSS growth over the idle clients opened, per client (derpbench connections --server-pid).', false, memoryChart()],
  ];
  for (const [id, title, caption, wide, config] of charts)
    figure(id, title, config ? caption : `${title}: not measured in these runs. ${caption}`, wide, config);
  document.documentElement.dataset.chartsRendered = String(rendered);
})();
