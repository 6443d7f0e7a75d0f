#!/usr/bin/env node
// Mints a one-time join token for a host agent, offline, with the host monitor's key: what `npm run up` (apps.sh)
// gives each host agent it starts as KILN_JOIN_TOKEN. The agent exchanges it once for a host credential
// (<KILN_DATA_DIR>/host-credential); the monitor refuses a second use. A running stack mints them over its admin API
// instead (POST /nodes/join-tokens).
//
//   node tools/stack/join-token.cjs <hostId> [ttlSeconds]     (default ttl 3600)
//
// Environment: HOST_JOIN_TOKEN_KEY (the host monitor's). Prints the token on stdout. Needs the built
// libs/messaging (libs/messaging/dist/join-token.js, pure: no Nest or NATS is loaded).
'use strict';
const { join } = require('node:path');

const { mintJoinToken } = require(join(__dirname, '../../libs/messaging/dist/join-token.js'));

const [hostId, ttlText = '3600'] = process.argv.slice(2);
if (!hostId || !/^[a-zA-Z0-9._-]{1,63}$/.test(hostId)) {
  console.error('usage: join-token.cjs <hostId> [ttlSeconds]   (host id: 1-63 of [a-zA-Z0-9._-])');
  process.exit(2);
}
const ttlSeconds = Number(ttlText);
if (!Number.isInteger(ttlSeconds) || ttlSeconds < 60) {
  console.error(`join-token: ttlSeconds must be an integer of at least 60, got ${ttlText}`);
  process.exit(2);
}
const key = process.env.HOST_JOIN_TOKEN_KEY;
if (!key || key.length < 32) {
  console.error('join-token: HOST_JOIN_TOKEN_KEY is not set (or shorter than 32 characters)');
  process.exit(2);
}
process.stdout.write(`${mintJoinToken(key, hostId, ttlSeconds).token}\n`);
