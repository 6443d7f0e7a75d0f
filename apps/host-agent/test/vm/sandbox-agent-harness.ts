import 'reflect-metadata';
import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { createClient } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { ConfigModule, HostAgentEnv, loadConfig } from '@kiln/config';
import { MessagingModule } from '@kiln/messaging';
import { Process } from '@kiln/proto/process';
import { TelemetryModule } from '@kiln/telemetry';
import type { PrivateServer } from '@kiln/testing';
import { hostResourceModules } from '../../src/host-modules';
import { NetworkModule, NetworkSlotPool } from '../../src/network';
import { SandboxManager, type LiveSandbox } from '../../src/sandbox/sandbox-manager.service';
import { SandboxModule } from '../../src/sandbox/sandbox.module';
import { DATA_DIR } from './vm-test-context';

/**
 * The sandbox manager wired as the agent wires it (real VMs, network slots, a private NATS for lifecycle events), in
 * a data dir of a suite's own that shares the built templates, with slot names and addresses private to the suite.
 */
export interface SuiteHost {
  dataDir: string;
  /** Network prefix and slot CIDR of the suite's own. */
  prefix: string;
  cidr: string;
  hostId: string;
}

export interface SandboxAgent {
  app: INestApplicationContext;
  manager: SandboxManager;
  env: HostAgentEnv;
}

export async function startSandboxAgent(host: SuiteHost, nats: PrivateServer, settings: Record<string, string> = {}): Promise<SandboxAgent> {
  mkdirSync(host.dataDir, { recursive: true });
  for (const shared of ['templates', 'images', 'cache', 'vmm']) {
    const link = join(host.dataDir, shared);
    if (!existsSync(link) && existsSync(join(DATA_DIR, shared))) symlinkSync(join(DATA_DIR, shared), link);
  }
  const env = loadConfig(HostAgentEnv, {
    ...process.env,
    NATS_URL: nats.url,
    KILN_DATA_DIR: host.dataDir,
    KILN_NETWORK_PREFIX: host.prefix,
    KILN_SLOT_CIDR: host.cidr,
    KILN_NETWORK_PREFILL: '1',
    KILN_MAX_SANDBOXES: '8',
    KILN_CLONE_POOL_SIZE: '0',
    KILN_HOST_ID: host.hostId,
    // Fixed per suite host, so an agent restarted by a suite opens the records its predecessor sealed.
    KILN_HOST_STATE_KEY: `${host.hostId}-host-state-key`.padEnd(32, '0'),
    ...settings,
  });
  @Module({
    imports: [
      ConfigModule.forRoot(HostAgentEnv, env),
      TelemetryModule.forRoot({ service: 'host-agent-test', logLevel: 'warn' }),
      MessagingModule.forRoot({ natsUrl: nats.url, name: 'host-agent-test' }),
      SandboxModule.register(hostResourceModules(env)),
    ],
  })
  class SandboxAgentTestModule {}
  const app = await NestFactory.createApplicationContext(SandboxAgentTestModule, { logger: ['error', 'warn'], abortOnError: false });
  app.enableShutdownHooks();
  return { app, manager: app.get(SandboxManager), env };
}

/** Every network slot with the suite's prefix, as `npm run down` removes an agent's. */
export async function removeSuiteNetwork(host: Pick<SuiteHost, 'prefix' | 'cidr'>): Promise<void> {
  @Module({ imports: [NetworkModule.register({ namePrefix: host.prefix, slotCidr: host.cidr, prefill: 0 })] })
  class NetworkCleanupModule {}
  const app = await NestFactory.createApplicationContext(NetworkCleanupModule, { logger: ['error'] });
  const pool = app.get(NetworkSlotPool);
  await pool.init([]);
  await pool.destroyAll();
  await app.close();
}

/** Runs `command` with bash in the sandbox, through its guest agent as the SDK would; resolves with its stdout. */
export async function runInSandbox(live: LiveSandbox, command: string): Promise<string> {
  const headers: Record<string, string> = live.record.envdAccessToken ? { 'X-Access-Token': live.record.envdAccessToken } : {};
  const client = createClient(Process, createConnectTransport({ baseUrl: `http://${live.slot!.hostAddress}:49983`, httpVersion: '1.1', nodeOptions: { agent: live.guestConnections } }));
  let out = '';
  for await (const r of client.start({ process: { cmd: '/bin/bash', args: ['-c', command], envs: {} } }, { headers, timeoutMs: 60_000 })) {
    const e = r.event?.event;
    if (e?.case === 'data' && e.value.output.case === 'stdout') out += Buffer.from(e.value.output.value).toString();
  }
  return out;
}
