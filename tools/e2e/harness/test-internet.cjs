// Stand-in hosts for egress tests, run inside a network namespace the test owns:
//   node test-internet.cjs <cert.pem> <key.pem>
// Listens on every address of the namespace: HTTP on :80 answers `host=<Host header>` (and `/bytes/<n>` with n zero
// bytes, for throughput), HTTPS on :443 answers `sni=<server name the client sent>`, and a plain TCP service on :7
// answers `tcp`. Each answer also names the local
// address the client reached, so a test can tell its stand-in hosts apart. Prints "ready" once all listen; exits
// when stdin closes.
'use strict';
const { readFileSync } = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const net = require('node:net');

const [certPath, keyPath] = process.argv.slice(2);

const answer = (req, res, what) => {
  res.writeHead(200, { 'content-type': 'text/plain', connection: 'close' });
  res.end(`${what} at=${req.socket.localAddress}\n`);
};

const CHUNK = Buffer.alloc(64 * 1024);
const MAX_BYTES = 1 << 30;

/** Streams n zero bytes at the pace the client reads them. */
function sendBytes(res, n) {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': n });
  let left = n;
  const pump = () => {
    while (left > 0) {
      const part = left >= CHUNK.length ? CHUNK : CHUNK.subarray(0, left);
      left -= part.length;
      if (!res.write(part)) return void res.once('drain', pump);
    }
    res.end();
  };
  pump();
}

const plain = http.createServer((req, res) => {
  const bytes = /^\/bytes\/(\d{1,10})$/.exec(req.url ?? '');
  if (bytes && Number(bytes[1]) <= MAX_BYTES) return sendBytes(res, Number(bytes[1]));
  answer(req, res, `host=${req.headers.host ?? ''}`);
});
const tls = https.createServer({ cert: readFileSync(certPath), key: readFileSync(keyPath) }, (req, res) =>
  answer(req, res, `sni=${req.socket.servername || ''}`),
);
// Probes connect and drop at once: a reset from a client is normal here, not a reason to stop serving.
const ignoreResets = (socket) => socket.on('error', () => socket.destroy());
const tcp = net.createServer((socket) => {
  ignoreResets(socket);
  socket.end(`tcp at=${socket.localAddress}\n`);
});
// TCP 53 too, so a test can show that port 53 is refused on a host that does listen there.
const tcpDns = net.createServer((socket) => {
  ignoreResets(socket);
  socket.end();
});

let listening = 0;
const ready = () => {
  if (++listening === 4) process.stdout.write('ready\n');
};
plain.listen(80, '0.0.0.0', ready);
tls.listen(443, '0.0.0.0', ready);
tcp.listen(7, '0.0.0.0', ready);
tcpDns.listen(53, '0.0.0.0', ready);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
