// A DNS server that knows one name, for tests that must not touch the real network:
//   node tiny-dns-server.cjs <listen-ipv4> <name> <ipv4-answer>
// Answers A queries for <name> with <ipv4-answer>, other types for <name> with no data, anything else with
// NXDOMAIN. Prints "ready" once it listens.
'use strict';
const dgram = require('node:dgram');
const dnsPacket = require('dns-packet');

const [listenIp, knownName, answer] = process.argv.slice(2);
const socket = dgram.createSocket('udp4');

socket.on('message', (message, peer) => {
  let query;
  try {
    query = dnsPacket.decode(message);
  } catch {
    return;
  }
  const [question] = query.questions ?? [];
  if (!question) return;
  const known = question.name.toLowerCase() === knownName.toLowerCase();
  const response = dnsPacket.encode({
    type: 'response',
    id: query.id,
    // RD copied, RA set; NXDOMAIN (rcode 3) for unknown names.
    flags: dnsPacket.RECURSION_DESIRED | dnsPacket.RECURSION_AVAILABLE | (known ? 0 : 3),
    questions: [question],
    answers: known && question.type === 'A' ? [{ type: 'A', class: 'IN', name: question.name, ttl: 60, data: answer }] : [],
  });
  socket.send(response, peer.port, peer.address);
});

socket.bind(53, listenIp, () => process.stdout.write('ready\n'));
