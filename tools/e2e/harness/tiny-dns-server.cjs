// A DNS server that knows one name, for tests that must not touch the real network:
//   node tiny-dns-server.cjs <listen-ipv4> <name> <ipv4-answer>
// Answers A queries for <name> with <ipv4-answer>, other types for <name> with no data, anything else with
// NXDOMAIN. Prints "ready" once it listens.
'use strict';
const dgram = require('node:dgram');

const [listenIp, knownName, answer] = process.argv.slice(2);
const socket = dgram.createSocket('udp4');

socket.on('message', (query, peer) => {
  if (query.length < 17) return;
  let offset = 12;
  const labels = [];
  while (offset < query.length && query[offset] !== 0) {
    const length = query[offset];
    labels.push(query.toString('latin1', offset + 1, offset + 1 + length));
    offset += length + 1;
  }
  const questionEnd = offset + 5;
  if (questionEnd > query.length) return;
  const qtype = query.readUInt16BE(offset + 1);
  const known = labels.join('.').toLowerCase() === knownName.toLowerCase();
  const withAnswer = known && qtype === 1;

  const header = Buffer.alloc(12);
  query.copy(header, 0, 0, 2);
  // QR, RD and RA set; rcode 3 (NXDOMAIN) for unknown names.
  header.writeUInt16BE(0x8180 | (known ? 0 : 3), 2);
  header.writeUInt16BE(1, 4);
  header.writeUInt16BE(withAnswer ? 1 : 0, 6);
  const parts = [header, query.subarray(12, questionEnd)];
  if (withAnswer) {
    const record = Buffer.alloc(16);
    record.writeUInt16BE(0xc00c, 0); // name: pointer to the question
    record.writeUInt16BE(1, 2); // type A
    record.writeUInt16BE(1, 4); // class IN
    record.writeUInt32BE(60, 6); // TTL
    record.writeUInt16BE(4, 10);
    answer.split('.').forEach((octet, i) => (record[12 + i] = Number(octet)));
    parts.push(record);
  }
  socket.send(Buffer.concat(parts), peer.port, peer.address);
});

socket.bind(53, listenIp, () => process.stdout.write('ready\n'));
