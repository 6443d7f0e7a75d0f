#!/usr/bin/env node
// Writes the stack's nats-server configuration (tools/stack/nats.sh): Kiln's NATS users with their permissions, as
// libs/messaging defines them (nats-permissions.ts, compiled by the build), and the passwords of $KILN_STATE/secrets.env.
//
//   node tools/stack/nats-config.cjs <out-file>
//
// Environment: KILN_NATS_PORT, KILN_NATS_HOST (listen address, default 127.0.0.1), KILN_NATS_STORE_DIR (JetStream),
// KILN_NATS_HOST_USERS (the stack's host agents: whitespace-separated `<hostId>=<password>`, one user host:<hostId>
// each), and the passwords GATEWAY_NATS_PASSWORD, SCHEDULER_NATS_PASSWORD, HOST_MONITOR_NATS_PASSWORD,
// TEMPLATE_BUILDER_NATS_PASSWORD. The file holds the passwords: written 0600, atomically.
'use strict';
const { renameSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const dist = join(__dirname, '../../libs/messaging/dist');
const { kilnNatsUsers, NATS_SERVICE_USERS } = require(join(dist, 'nats-permissions.js'));
const { renderNatsServerConfig } = require(join(dist, 'nats-server-config.js'));

function required(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`nats-config: ${name} is not set`);
    process.exit(2);
  }
  return value;
}

/** gateway → GATEWAY_NATS_PASSWORD, host-monitor → HOST_MONITOR_NATS_PASSWORD. */
const passwordVariable = (app) => `${app.toUpperCase().replace(/-/g, '_')}_NATS_PASSWORD`;

const out = process.argv[2];
if (!out) {
  console.error('usage: nats-config.cjs <out-file>');
  process.exit(2);
}
const port = Number(required('KILN_NATS_PORT'));
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`nats-config: KILN_NATS_PORT must be a port, got ${process.env.KILN_NATS_PORT}`);
  process.exit(2);
}
const services = Object.fromEntries(NATS_SERVICE_USERS.map((service) => [service, required(passwordVariable(service))]));
const hosts = {};
for (const entry of required('KILN_NATS_HOST_USERS').trim().split(/\s+/)) {
  const match = /^([a-zA-Z0-9._-]{1,63})=(\S+)$/.exec(entry);
  if (!match) {
    console.error('nats-config: KILN_NATS_HOST_USERS entries must be <hostId>=<password>');
    process.exit(2);
  }
  if (match[1] in hosts) {
    console.error(`nats-config: host ${match[1]} is listed twice in KILN_NATS_HOST_USERS`);
    process.exit(2);
  }
  hosts[match[1]] = match[2];
}
const host = process.env.KILN_NATS_HOST || '127.0.0.1';
const config = renderNatsServerConfig({ host, port, storeDir: required('KILN_NATS_STORE_DIR'), users: kilnNatsUsers(services, hosts) });
const tmp = `${out}.${process.pid}.tmp`;
writeFileSync(tmp, config, { mode: 0o600 });
renameSync(tmp, out);
