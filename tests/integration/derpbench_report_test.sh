#!/usr/bin/env bash
# derpbench report and size from the committed two-run file (tests/data/derpbench/two-runs.jsonl,
# a real run of this project's derpd, per-packet and batched writes): bad run files are refused
# naming file and line; the page renders in headless Chromium, its screenshot is not blank and
# shows both runs' colours, and the DOM after the scripts ran holds what Chart.js computed: axis
# titles, tick labels covering the data, each run's legend entry and every knee's label. Exit 77
# (skip) without chromium, after the checks that need none.
set -uo pipefail
bench="${DERP_BUILD_ROOT:?}/bench/derpbench"
runs="${DERP_SOURCE_ROOT:?}/tests/data/derpbench/two-runs.jsonl"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
[[ -s "$runs" ]] || { echo "FAIL: fixture $runs is missing"; exit 1; }

# Bad run files: a clear error naming the file (and line), exit 1, no page written.
: >"$tmp/empty.jsonl"
head -c 200 "$runs" >"$tmp/truncated.jsonl"
{ head -n 2 "$runs"; echo '{"name":"left-pad","version":"1.3.0"}'; } >"$tmp/foreign.jsonl"
for case in "empty.jsonl: empty file" "truncated.jsonl:1: the last line is cut short" "foreign.jsonl:3: not a derpbench run record"; do
  file=${case%%:*}
  out=$("$bench" report "$runs" "$tmp/$file" -o "$tmp/bad.html" 2>&1)
  rc=$?
  ((rc == 1)) && grep -qF "$tmp/$case" <<<"$out" && [[ ! -e "$tmp/bad.html" ]] && echo "ok: $file refused: $out" ||
    fail "$file (exit $rc): $out"
  out=$("$bench" size "$tmp/$file" --target clients=1000,gbps=1 2>&1)
  (($? == 1)) && grep -qF "$tmp/$case" <<<"$out" || fail "size $file: $out"
done
out=$("$bench" report "$tmp/missing.jsonl" 2>&1)
(($? == 1)) && grep -q "missing.jsonl: No such file" <<<"$out" && echo "ok: a missing file is named" || fail "missing: $out"

# The Markdown table and the sizing, from the same file.
md=$("$bench" report "$runs" --format markdown)
grep -q '^| derpd 0.1.0, per-packet writes, plain | per-packet | 570 B | 4 | ' <<<"$md" &&
  grep -q '^| derpd 0.1.0, batched writes, plain | batched | 1400 B | 4 | ' <<<"$md" && echo "ok: markdown table" ||
  fail "markdown: $md"
size=$("$bench" size "$runs" --target clients=50000,gbps=20 --node shards=16,memory-gib=64 --json)
(($? == 0)) && (($(grep -c '"nodes":' <<<"$size") == 2)) && grep -q '"bound":"CPU"' <<<"$size" && echo "ok: size --json" ||
  fail "size: $size"

# docs/BENCHMARKS.md's capacity table is the tool's output for the committed run file.
src="${DERP_SOURCE_ROOT:?}"
want=$("$bench" report "$src/docs/runs/capacity.jsonl" --format markdown)
got=$(sed -n '/^<!-- derpbench-capacity-table: begin/,/^<!-- derpbench-capacity-table: end/p' "$src/docs/BENCHMARKS.md" | sed '1d;$d')
[[ -n "$want" && "$got" == "$want" ]] && echo "ok: BENCHMARKS.md's capacity table is derpbench's" ||
  fail "docs/BENCHMARKS.md's capacity table differs from derpbench report docs/runs/capacity.jsonl (run bench/capacity_doc.sh)"

"$bench" report "$runs" -o "$tmp/report.html" --target clients=50000,gbps=20 2>/dev/null || fail "report exit $?"
grep -q 'class="twin-axis"' "$tmp/report.html" && fail "the text twin is in the file: it must come from the page's script"

chromium=$(command -v chromium || command -v chromium-browser) || { echo "SKIP: no chromium (apt-get install chromium)"; exit $((failures > 0 ? 1 : 77)); }
browse=("$chromium" --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir="$tmp/profile"
        --window-size=1200,2200 --virtual-time-budget=10000)
timeout 120 "${browse[@]}" --screenshot="$tmp/shot.png" "file://$tmp/report.html" >"$tmp/chromium.log" 2>&1 ||
  fail "chromium --screenshot: $(tail -3 "$tmp/chromium.log")"
timeout 120 "${browse[@]}" --dump-dom "file://$tmp/report.html" >"$tmp/dom.html" 2>>"$tmp/chromium.log" ||
  fail "chromium --dump-dom: $(tail -3 "$tmp/chromium.log")"

# The checks read the PNG (zlib, no imaging library) and the DOM against the run file itself.
python3 - "$tmp/shot.png" "$tmp/dom.html" "$runs" <<'PY' || failures=$((failures + 1))
import json, re, struct, sys, zlib
shot, dom_path, runs_path = sys.argv[1:4]
bad = []

def pixels(path):
    data = open(path, 'rb').read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG'
    at, idat, width = 8, b'', 0
    while at < len(data):
        length, kind = struct.unpack('>I4s', data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b'IHDR':
            width, height, depth, colour = struct.unpack('>IIBB', body[:10])
            assert depth == 8 and colour in (2, 6), f'PNG depth {depth} colour type {colour}'
            step = 3 if colour == 2 else 4
        elif kind == b'IDAT':
            idat += body
        at += 12 + length
    raw, stride, prev, out = zlib.decompress(idat), width * step, bytearray(width * step), []
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - step] if i >= step else 0
            b, c = prev[i], (prev[i - step] if i >= step else 0)
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.extend(tuple(line[i:i + 3]) for i in range(0, stride, step))
        prev = line
    return out

px = pixels(shot)
colours = set(px)
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
labels = list(dict.fromkeys(r['run'] for r in runs))
# The page gives runs colours in order: #0072b2, then #d55e00.
run_colours = [(0x00, 0x72, 0xb2), (0xd5, 0x5e, 0x00)][:len(labels)]
print(f'screenshot: {len(px)} pixels, {len(colours)} distinct colours')
if len(colours) < 50: bad.append(f'screenshot nearly blank: {len(colours)} colours')
for c in run_colours:
    n = sum(1 for p in px if p == c)
    if n < 200: bad.append(f'run colour #{bytes(c).hex()} drawn on {n} pixels only')

dom = open(dom_path).read()
text = lambda s: s.replace('&amp;', '&').replace('&lt;', '<').replace('&gt;', '>').replace('&quot;', '"')
if 'data-charts-rendered="5"' not in dom: bad.append('not every chart rendered (data-charts-rendered)')
twin = re.search(r'<details class="twin" data-chart="delivered-pps">(.*?)</details>', dom, re.S)
if not twin:
    bad.append('no text twin of the delivered chart')
else:
    t = text(twin.group(1))
    axes = dict(re.findall(r'data-axis="(\w+)">\w axis "([^"]*)": ticks ([^<]*)<', t) and
                [(a, (n, ticks)) for a, n, ticks in re.findall(r'data-axis="(\w+)">\w axis "([^"]*)": ticks ([^<]*)<', t)])
    def value(label):
        m = re.fullmatch(r'([\d.]+)([kMG]?)', label.strip())
        return float(m.group(1)) * {'': 1, 'k': 1e3, 'M': 1e6, 'G': 1e9}[m.group(2)] if m else None
    points = [r for r in runs if r['workload'] == 'sweep-point']
    for axis, title, key in (('x', 'offered load (packets/s)', 'offered_pps'), ('y', 'delivered (packets/s)', 'delivered_pps')):
        if axis not in axes or axes[axis][0] != title:
            bad.append(f'{axis} axis title: {axes.get(axis)}'); continue
        ticks = [value(v) for v in axes[axis][1].split(', ')]
        if len(ticks) < 3 or None in ticks: bad.append(f'{axis} tick labels: {axes[axis][1]}'); continue
        if max(ticks) < max(p[key] for p in points): bad.append(f'{axis} ticks {axes[axis][1]} do not reach the data')
    if 'loss' not in axes or '1 %' not in axes['loss'][1].split(', '): bad.append(f'loss axis: {axes.get("loss")}')
    legend = re.search(r'class="twin-legend">legend: ([^<]*)<', t)
    for label in labels:
        if not legend or label not in legend.group(1): bad.append(f'legend lacks run {label!r}')
    drawn = re.findall(r'class="twin-knee">([^<]*)<', t)
    for k in (r for r in runs if r['workload'] == 'sweep-knee'):
        want = f"knee: {round(k['delivered_pps']):,} pkt/s ({k['size']} B, {k['pairs']} pairs)"
        if want not in drawn: bad.append(f'knee label {want!r} not drawn (drawn: {drawn})')
    print('delivered chart:', '; '.join(f'{a} "{n}": {ticks}' for a, (n, ticks) in axes.items()))
    print('knee labels drawn:', drawn)
for chart in ('delivered-gbps', 'cpu-per-gbit', 'rtt', 'memory'):
    if not re.search(rf'data-chart="{chart}">.*?class="twin-axis"', dom, re.S): bad.append(f'chart {chart} has no axes as text')
for b in bad: print('FAIL:', b)
sys.exit(1 if bad else 0)
PY
((failures == 0)) && echo "ok: the page renders in chromium with its axes, ticks, legend and knees"
exit $((failures > 0))
