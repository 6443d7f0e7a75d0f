/**
 * Host monitor heartbeat throughput: 1000 simulated hosts heartbeat through a real nats-server into the real host
 * monitor (its AppModule: Nest's NATS transport, HeartbeatController, FleetService with its 1 s sweep and KV flush
 * every HOST_VIEW_FLUSH_MS, Postgres). The plan's bar: ≥ 5000 heartbeats/s processed.
 *
 * Baseline in the same run: the same messages, from the same publisher, to a no-op core-NATS subscriber in the same
 * process (raw NATS delivery, the ceiling for anything that listens on NATS here).
 *
 * Each round is one heartbeat from every host (a batch of BENCH_HOSTS messages), published back to back; the round
 * ends when the last one was processed. Rounds do not overlap, so the subscriber never falls behind by more than a
 * round (no slow-consumer drops) and the per-round times are latencies under saturation: p50/p95 of a round, and the
 * rate over all rounds.
 *
 * Run from the repository root (needs Postgres on 127.0.0.1:5432 and the nats-server binary). Nest's DI needs decorator
 * metadata, which esbuild (run-bench.mjs) does not emit, so the sources are compiled on load with swc:
 *   node --conditions=development --require ./tools/bench/gateway-ts-register.cjs tools/bench/host-monitor-heartbeats.bench.ts
 * Env: BENCH_HOSTS (default 1000), BENCH_ROUNDS (default 60), BENCH_NATS_URL (default: a private nats-server; an
 * anonymous one such as nats://127.0.0.1:4222 works too, but must not run another host monitor: it would share the
 * queue group and take half the heartbeats).
 */
import 'reflect-metadata';
import { performance } from 'node:perf_hooks';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { NatsConnection, connect } from 'nats';
import { HostMonitorEnv, loadConfig } from '@kiln/config';
import { createTestDatabase } from '@kiln/db/testing';
import { HostHeartbeat, MonitorSubjects, hostHeartbeatSubject, hostRegisterSubject, mintJoinToken, natsServerOptions } from '@kiln/messaging';
import { PrivateServer, startPrivateNats } from '@kiln/testing';
import { AppModule } from '../../apps/host-monitor/src/app.module';
import { FleetService } from '../../apps/host-monitor/src/fleet/fleet.service';
import { percentile, report } from './support/sample-stats';

const HOSTS = Number(process.env.BENCH_HOSTS ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 60);
const WARMUP_ROUNDS = 5;
const JOIN_TOKEN_KEY = 'host-monitor-heartbeat-bench-join-token-key-012345';
const TARGET_PER_SECOND = 5000;

const hostIds = Array.from({ length: HOSTS }, (_, i) => `bench-host-${String(i).padStart(4, '0')}`);

function heartbeat(hostId: string, round: number): HostHeartbeat {
  const sandboxes = round % 8;
  return {
    hostId,
    at: new Date().toISOString(),
    capacity: { vcpus: 32, memoryMib: 131072, sandboxes: 64, diskMib: 500_000 },
    usage: { vcpus: sandboxes * 2, memoryMib: sandboxes * 1024, sandboxes, diskMib: sandboxes * 2048, diskUsedMib: 12_000, starting: round % 2 },
    templates: ['base', 'python', 'node'],
    readyCloneTemplates: ['base'],
    sandboxIds: Array.from({ length: sandboxes }, (_, i) => `sbx${hostId.slice(-4)}${i}`),
    acceleration: 'kvm',
    agentVersion: 'bench',
  };
}

/** A heartbeat as the agent's Nest client sends it: the `{pattern, data}` packet. */
function packet(subject: string, hostId: string, round: number): string {
  return JSON.stringify({ pattern: subject, data: heartbeat(hostId, round) });
}

/**
 * Publishes `rounds` rounds of one message per host to `subjectOf(hostId)` and times each until `processed()` caught
 * up. Returns round durations (ms) and the total rate.
 */
async function measure(
  publisher: NatsConnection,
  subjectOf: (hostId: string) => string,
  counter: { processed: number; waiter?: () => void },
  rounds: number,
): Promise<{ roundMs: number[]; perSecond: number }> {
  const roundMs: number[] = [];
  let total = 0;
  let totalMs = 0;
  for (let round = 0; round < rounds + WARMUP_ROUNDS; round++) {
    const target = counter.processed + hostIds.length;
    const done = new Promise<void>((resolve) => {
      counter.waiter = () => {
        if (counter.processed >= target) resolve();
      };
    });
    const t0 = performance.now();
    for (const hostId of hostIds) {
      const subject = subjectOf(hostId);
      publisher.publish(subject, packet(subject, hostId, round));
    }
    await done;
    const ms = performance.now() - t0;
    if (round >= WARMUP_ROUNDS) {
      roundMs.push(ms);
      total += hostIds.length;
      totalMs += ms;
    }
  }
  counter.waiter = undefined;
  return { roundMs, perSecond: total / (totalMs / 1000) };
}

async function main(): Promise<void> {
  const privateNats: PrivateServer | undefined = process.env.BENCH_NATS_URL ? undefined : await startPrivateNats();
  const natsUrl = process.env.BENCH_NATS_URL ?? privateNats!.url;
  const db = await createTestDatabase();
  let monitor: NestFastifyApplication | undefined;
  const connections: NatsConnection[] = [];
  try {
    const env = loadConfig(HostMonitorEnv, {
      NATS_URL: natsUrl,
      DATABASE_URL: db.url,
      LOG_LEVEL: 'warn',
      HOST_JOIN_TOKEN_KEY: JOIN_TOKEN_KEY,
      // KV flush every second (the default). Thresholds longer than the default: 1000 joins take a few seconds (the
      // database), and the first hosts to join must not turn unhealthy before the rounds start; this measures the
      // steady state (a sweep of every host each second included), not transitions.
      HOST_UNHEALTHY_AFTER_SECONDS: '30',
      HOST_DEAD_AFTER_SECONDS: '60',
    });
    monitor = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: ['warn', 'error'] });
    monitor.connectMicroservice(natsServerOptions(env.NATS_URL, 'host-monitor'));
    await monitor.init();
    await monitor.startAllMicroservices();
    await monitor.listen(0, '127.0.0.1');

    const publisher = await connect({ servers: natsUrl, name: 'bench-agents' });
    const listener = await connect({ servers: natsUrl, name: 'bench-baseline' });
    connections.push(publisher, listener);

    // Every host joins with its own join token, 50 at a time, as agents would.
    const t0 = performance.now();
    for (let i = 0; i < hostIds.length; i += 50) {
      await Promise.all(
        hostIds.slice(i, i + 50).map(async (hostId) => {
          const subject = hostRegisterSubject(hostId);
          const registration = {
            hostId,
            token: mintJoinToken(JOIN_TOKEN_KEY, hostId, 600).token,
            grpcAddress: '10.0.0.1:50051',
            proxyUrl: 'http://10.0.0.1:5007',
            acceleration: 'kvm',
            version: 'bench',
            capacity: { vcpus: 32, memoryMib: 131072, sandboxes: 64, diskMib: 500_000 },
            templates: ['base'],
            readyCloneTemplates: [],
          };
          const reply = await publisher.request(subject, JSON.stringify({ pattern: subject, data: registration, id: hostId }), { timeout: 30_000 });
          const body = JSON.parse(new TextDecoder().decode(reply.data)) as { response?: { accepted?: boolean }; err?: unknown };
          if (!body.response?.accepted) throw new Error(`registration of ${hostId} failed: ${JSON.stringify(body.err ?? body)}`);
        }),
      );
    }
    console.log(`${HOSTS} hosts registered in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

    // The monitor: count what FleetService.heartbeat processed (the controller's call, after NATS and Nest).
    const fleet = monitor.get(FleetService);
    const monitorCounter: { processed: number; waiter?: () => void } = { processed: 0 };
    const heartbeatOf = fleet.heartbeat.bind(fleet);
    fleet.heartbeat = (beat: HostHeartbeat) => {
      const known = heartbeatOf(beat);
      if (known) monitorCounter.processed += 1;
      monitorCounter.waiter?.();
      return known;
    };

    // The baseline: the same packets to a no-op subscriber on subjects the monitor does not hear.
    const baselineCounter: { processed: number; waiter?: () => void } = { processed: 0 };
    listener.subscribe('bench.heartbeat.>', {
      callback: () => {
        baselineCounter.processed += 1;
        baselineCounter.waiter?.();
      },
    });
    await listener.flush();

    const baseline = await measure(publisher, (hostId) => `bench.heartbeat.${hostId}`, baselineCounter, ROUNDS);
    const monitored = await measure(publisher, (hostId) => hostHeartbeatSubject(hostId), monitorCounter, ROUNDS);
    await fleet.flush();
    await fleet.settled();

    // Sanity: the monitor's view holds the last round, and no host died of the load.
    const { nodes } = await (async () => {
      const reply = await publisher.request(MonitorSubjects.nodesList, JSON.stringify({ pattern: MonitorSubjects.nodesList, data: {}, id: 'list' }), { timeout: 10_000 });
      return (JSON.parse(new TextDecoder().decode(reply.data)) as { response: { nodes: { state: string }[] } }).response;
    })();
    const notReady = nodes.filter((node) => node.state !== 'ready').length;

    console.log(`\nHost monitor heartbeats: ${HOSTS} hosts, ${ROUNDS} rounds of one heartbeat per host (after ${WARMUP_ROUNDS} warm-up rounds)`);
    report(`baseline: raw NATS delivery, no-op subscriber (ms per round of ${HOSTS})`, baseline.roundMs, { width: 72 });
    report(`host monitor: NATS → Nest → FleetService (ms per round of ${HOSTS})`, monitored.roundMs, { width: 72 });
    console.log(`${'baseline: heartbeats/s'.padEnd(72)} ${baseline.perSecond.toFixed(0).padStart(9)}`);
    console.log(`${'host monitor: heartbeats/s processed'.padEnd(72)} ${monitored.perSecond.toFixed(0).padStart(9)}`);
    console.log(`${'host monitor / baseline (rate)'.padEnd(72)} ${(monitored.perSecond / baseline.perSecond).toFixed(2).padStart(9)}`);
    console.log(`${'host monitor p95 round / baseline p95 round'.padEnd(72)} ${(percentile(monitored.roundMs, 95) / percentile(baseline.roundMs, 95)).toFixed(2).padStart(9)}`);
    console.log(`hosts in the view: ${nodes.length}, not ready: ${notReady}`);
    const verdict = monitored.perSecond >= TARGET_PER_SECOND ? 'meets' : 'MISSES';
    console.log(`${verdict} the target of ${TARGET_PER_SECOND} heartbeats/s`);
    if (monitored.perSecond < TARGET_PER_SECOND || nodes.length !== HOSTS || notReady > 0) process.exitCode = 1;
  } finally {
    for (const connection of connections) await connection.close().catch(() => undefined);
    await monitor?.close();
    await db.drop();
    await privateNats?.stop();
  }
}

void main().catch((error) => {
  console.error(error);
  process.exit(1);
});
