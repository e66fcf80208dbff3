// Node `ws` against derpd's WebSocket /derp (spec 3.4): a relayed packet each way with a native
// DERP client, over fragmented messages with a ping between the fragments, then the edge cases
// that must end in a counted close: text, unmasked and oversize frames, a subprotocol that is
// not exactly "derp", a stream cut inside a frame, and clients that never finish a handshake.
// Usage: node edge.js PORT JS_SECRET_HEX NATIVE_PUBLIC_HEX. Prints one line per case; exits 0
// only if every case ended as expected. Every wait has a generous deadline; none is a sleep.
'use strict';
const net = require('net');
const WebSocket = require('ws');
const nacl = require('tweetnacl');
const { derpConnect, hex, unhex } = require('./derp_ws.js');

// Optional 4th and 5th arguments: the URL scheme (wss over derpd's TLS) and the one case to run.
const [port, secretHex, nativeHex, scheme = 'ws', only] = process.argv.slice(2);
const url = `${scheme}://127.0.0.1:${port}/derp`;
const deadlineMs = 15000;

function open(protocol) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocol);
    ws.binaryType = 'arraybuffer';
    const timer = setTimeout(() => reject(new Error('open timed out')), deadlineMs);
    ws.once('open', () => { clearTimeout(timer); resolve(ws); });
    ws.once('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

// Resolves with the close code the server sent (1006 when the TCP connection just ended).
function closed(ws) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no close in time')), deadlineMs);
    ws.on('error', () => {});  // a refused frame may also surface as an error first
    ws.once('close', (code, reason) => { clearTimeout(timer); resolve({ code, reason: reason.toString() }); });
  });
}

async function relay() {
  const ws = new WebSocket(url, 'derp');
  ws.binaryType = 'arraybuffer';
  // Fragment every message we send in two, with a ping between the fragments.
  const pongs = [];
  ws.on('pong', (data) => pongs.push(data.toString()));
  const realSend = ws.send.bind(ws);
  let n = 0;
  ws.send = (data) => {
    const bytes = Buffer.from(data);
    const half = bytes.length >> 1;
    realSend(bytes.subarray(0, half), { binary: true, fin: false });
    ws.ping(`p${n++}`);
    realSend(bytes.subarray(half), { binary: true, fin: true });
  };
  // ServerKey may arrive with the 101: the DERP reader must listen from the open event on.
  const derp = await new Promise((resolve, reject) => {
    ws.once('open', () => derpConnect(nacl, ws, unhex(secretHex), deadlineMs).then(resolve, reject));
    ws.once('error', reject);
  });
  derp.send(unhex(nativeHex), new TextEncoder().encode('hello from node'));
  const got = await derp.next(0x05);
  const src = hex(got.slice(0, 32));
  const text = new TextDecoder().decode(got.slice(32));
  if (src !== nativeHex || text !== 'hello from native') throw new Error(`unexpected packet ${src} ${text}`);
  // Pongs come back in order, each with its ping's payload.
  const start = Date.now();
  while (pongs.length < n && Date.now() - start < deadlineMs) await new Promise((r) => setTimeout(r, 20));
  if (pongs.join(',') !== Array.from({ length: n }, (_, i) => `p${i}`).join(','))
    throw new Error('pongs ' + pongs.join(','));
  const done = closed(ws);
  ws.close(1000);
  const c = await done;
  if (c.code !== 1000) throw new Error('close answered with ' + c.code);
  return `relayed both ways, ${n} pings answered`;
}

async function expectClose(protocol, act, code) {
  const ws = await open(protocol);
  const done = closed(ws);
  act(ws);
  const c = await done;
  if (c.code !== code) throw new Error(`closed with ${c.code} (${c.reason}), want ${code}`);
  return `closed ${c.code} ${c.reason}`;
}

// A masked frame header announcing `length` bytes (7-bit or 16-bit length form).
function maskedHeader(opcode, length) {
  const h = length < 126 ? Buffer.from([0x80 | opcode, 0x80 | length]) : Buffer.from([0x80 | opcode, 0x80 | 126, length >> 8, length & 0xff]);
  return Buffer.concat([h, Buffer.from([1, 2, 3, 4])]);
}

// Writes a raw request; resolves with what came back once `done(answer)` holds or the server
// closed the connection.
async function rawHttp(request, done = () => false) {
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(port), '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error('server did not close in time')); }, deadlineMs);
    s.on('connect', () => s.write(request));
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (done(got)) { clearTimeout(timer); s.destroy(); resolve(got); }
    });
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve(got); });
  });
}

const cases = {
  relay,
  text: () => expectClose('derp', (ws) => ws.send('hi'), 1003),
  unmasked: () => expectClose('derp', (ws) => ws._socket.write(Buffer.from([0x82, 0x03, 0x61, 0x62, 0x63])), 1002),
  oversize: () => expectClose('derp', (ws) => ws.send(Buffer.alloc((1 << 20) + 1)), 1009),
  fragmented_control: () => expectClose('derp', (ws) => ws._socket.write(maskedHeader(0x09, 0).fill(0x09, 0, 1)), 1002),
  // "x-derp" makes it WebSocket (spec 3.4: the header contains "derp"); "Derp" is selected as
  // spelled, which is not exactly "derp": derper closes with 1008.
  not_derp_subprotocol: () => expectClose(['x-derp', 'Derp'], () => {}, 1008),
  // The TCP stream ends 3 bytes into a 100-byte frame (too few for a DERP frame header, so
  // the DERP reader just waits): derpd counts eof_inside_frame.
  cut_inside_frame: async () => {
    const ws = await open('derp');
    ws._socket.write(Buffer.concat([maskedHeader(0x02, 100), Buffer.alloc(3)]));
    ws._socket.end();
    await closed(ws);
    return 'cut';
  },
  // Upgraded, but no ClientInfo ever: the DERP handshake deadline ends the session, and derpd
  // closes as derper's deferred Close does: 1011 "closing".
  never_sends_client_info: () => expectClose('derp', () => {}, 1011),
  // The request head never ends: derpd answers 408 at its header deadline and closes.
  never_finishes_request: async () => {
    const got = await rawHttp('GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: derp\r\n');
    if (!got.startsWith('HTTP/1.1 408 ')) throw new Error('answer ' + JSON.stringify(got.slice(0, 40)));
    return '408';
  },
  // Run only when asked for (derpd started with an admission that refuses): the DERP handshake
  // is refused after ServerKey, and the session ends as derper's deferred Close ends it.
  denied: async () => {
    const ws = new WebSocket(url, 'derp');
    ws.binaryType = 'arraybuffer';
    try {
      // ServerKey may arrive with the 101: listen from the open event on (as relay does).
      await new Promise((resolve, reject) => {
        ws.once('open', () => derpConnect(nacl, ws, unhex(secretHex), deadlineMs).then(resolve, reject));
        ws.once('error', reject);
      });
    } catch (e) {
      if (e.message !== 'closed 1011 closing') throw new Error('handshake ended with ' + e.message);
      return e.message;
    }
    throw new Error('admitted');
  },
  missing_key: async () => {
    const got = await rawHttp('GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
                              'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: derp\r\n\r\n',
                              (answer) => answer.endsWith('\n\n') || answer.endsWith('Sec-WebSocket-Key\n'));
    if (!got.startsWith('HTTP/1.1 400 ') || !got.includes('missing Sec-WebSocket-Key')) throw new Error('answer ' + JSON.stringify(got.slice(0, 60)));
    return '400';
  },
};

const optIn = new Set(['denied']);

(async () => {
  let failed = 0;
  for (const [name, run] of Object.entries(cases)) {
    if (only ? name !== only : optIn.has(name)) continue;
    try {
      console.log(`ok ${name}: ${await run()}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}: ${e.message}`);
    }
  }
  process.exit(failed === 0 ? 0 : 1);
})();
