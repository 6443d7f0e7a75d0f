#!/usr/bin/env node
// Writes the stack's nats-server configuration (tools/stack/nats.sh): Kiln's NATS users with their permissions, as
// libs/messaging defines them (nats-permissions.ts, compiled by the build), and the passwords of $KILN_STATE/secrets.env.
//
//   node tools/stack/nats-config.cjs <out-file>
//
// Environment: KILN_NATS_PORT, KILN_NATS_STORE_DIR (JetStream), KILN_HOST_ID (the stack's host agent), and the
// passwords GATEWAY_NATS_PASSWORD, SCHEDULER_NATS_PASSWORD, HOST_MONITOR_NATS_PASSWORD,
// TEMPLATE_BUILDER_NATS_PASSWORD, HOST_AGENT_NATS_PASSWORD. The file holds the passwords: written 0600, atomically.
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
const hosts = { [required('KILN_HOST_ID')]: required(passwordVariable('host-agent')) };
const config = renderNatsServerConfig({ port, storeDir: required('KILN_NATS_STORE_DIR'), users: kilnNatsUsers(services, hosts) });
const tmp = `${out}.${process.pid}.tmp`;
writeFileSync(tmp, config, { mode: 0o600 });
renameSync(tmp, out);
