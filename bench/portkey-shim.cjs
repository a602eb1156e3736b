// Preloaded into Node (node --require) when the benchmark runs Portkey's
// gateway. It changes two things, nothing else:
//
// 1. Mutable response headers. Portkey 1.15.x edits the headers of the
//    upstream's fetch Response on its streaming path; Node's fetch makes
//    them immutable, so every stream fails with "TypeError: immutable"
//    (Portkey-AI/gateway issues #1389 and #1550). Event-stream responses
//    are re-wrapped in a Response of the same body, status and headers,
//    whose headers are mutable. Other responses are left as they are.
// 2. Loopback only. Portkey listens on every interface; the benchmark
//    binds everything to 127.0.0.1, so a listen() without a host gets it.
'use strict';

const upstreamFetch = globalThis.fetch;
globalThis.fetch = async function (...args) {
  const res = await upstreamFetch.apply(this, args);
  if (!(res.headers.get('content-type') || '').startsWith('text/event-stream')) {
    return res;
  }
  return new Response(res.body, { status: res.status, statusText: res.statusText, headers: new Headers(res.headers) });
};

const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && typeof args[1] !== 'string') {
    args.splice(1, args[1] === undefined ? 1 : 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && args[0].port !== undefined && !args[0].host) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};
