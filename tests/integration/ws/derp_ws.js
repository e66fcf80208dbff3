// A minimal DERP client over WebSocket for the tests, shared by Node (require) and the browser
// page (a plain <script>): frames in, frames out, the NaCl handshake with tweetnacl. The
// transport is any WebSocket-like object (binaryType "arraybuffer"); each DERP frame goes as one
// binary message, as Tailscale's browser client sends them.
//
// DERP frame: 1B type, 4B big-endian length, payload. ServerKey 0x01 = 8B magic + 32B key;
// ClientInfo 0x02 = 32B key + 24B nonce + box(JSON); ServerInfo 0x03 = 24B nonce + box(JSON);
// SendPacket 0x04 = 32B destination + packet; RecvPacket 0x05 = 32B source + packet.
(function (root) {
  'use strict';
  const MAGIC = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];

  function hex(bytes) { return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join(''); }
  function unhex(s) { const out = new Uint8Array(s.length / 2); for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(2 * i, 2), 16); return out; }

  function frame(type, payload) {
    const f = new Uint8Array(5 + payload.length);
    f[0] = type;
    new DataView(f.buffer).setUint32(1, payload.length);
    f.set(payload, 5);
    return f;
  }

  // Runs the client handshake on an open socket; resolves with {send, next} once ServerInfo
  // arrived. `next(type)` resolves with the payload of the next frame of that type.
  function derpConnect(nacl, ws, secretKey, timeoutMs) {
    const pair = nacl.box.keyPair.fromSecretKey(secretKey);
    let buf = new Uint8Array(0);
    const frames = [];
    const waiters = [];
    let failure = null;
    function pump() {
      for (let i = 0; i < waiters.length; i++) {
        const w = waiters[i];
        if (failure) { waiters.splice(i--, 1); w.reject(failure); continue; }
        const at = frames.findIndex((f) => f.type === w.type);
        if (at >= 0) { waiters.splice(i--, 1); w.resolve(frames.splice(at, 1)[0].payload); }
      }
    }
    ws.addEventListener('message', (ev) => {
      const data = new Uint8Array(ev.data);
      const joined = new Uint8Array(buf.length + data.length);
      joined.set(buf); joined.set(data, buf.length); buf = joined;
      while (buf.length >= 5) {
        const len = new DataView(buf.buffer, buf.byteOffset).getUint32(1);
        if (buf.length < 5 + len) break;
        frames.push({ type: buf[0], payload: buf.slice(5, 5 + len) });
        buf = buf.slice(5 + len);
      }
      pump();
    });
    ws.addEventListener('close', (ev) => { failure = new Error('closed ' + ev.code + ' ' + ev.reason); pump(); });
    function next(type) {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('timeout waiting for frame ' + type)), timeoutMs);
        waiters.push({ type, resolve: (p) => { clearTimeout(timer); resolve(p); }, reject: (e) => { clearTimeout(timer); reject(e); } });
        pump();
      });
    }
    function send(dstKey, packet) {
      const p = new Uint8Array(32 + packet.length);
      p.set(dstKey); p.set(packet, 32);
      ws.send(frame(0x04, p));
    }
    return next(0x01).then((serverKeyFrame) => {
      for (let i = 0; i < 8; i++) if (serverKeyFrame[i] !== MAGIC[i]) throw new Error('bad magic');
      const serverKey = serverKeyFrame.slice(8, 40);
      const nonce = nacl.randomBytes(24);
      const json = new TextEncoder().encode(JSON.stringify({ version: 2, CanAckPings: true }));
      const sealed = nacl.box(json, nonce, serverKey, pair.secretKey);
      const info = new Uint8Array(32 + 24 + sealed.length);
      info.set(pair.publicKey); info.set(nonce, 32); info.set(sealed, 56);
      ws.send(frame(0x02, info));
      return next(0x03).then((serverInfo) => {
        const opened = nacl.box.open(serverInfo.slice(24), serverInfo.slice(0, 24), serverKey, pair.secretKey);
        if (!opened) throw new Error('ServerInfo did not open');
        return { send, next, publicKey: pair.publicKey, serverInfo: new TextDecoder().decode(opened) };
      });
    });
  }

  const api = { derpConnect, frame, hex, unhex };
  if (typeof module !== 'undefined' && module.exports) module.exports = api;
  else root.derpWs = api;
})(typeof self !== 'undefined' ? self : this);
