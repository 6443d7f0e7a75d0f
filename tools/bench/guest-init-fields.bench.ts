/**
 * What each field of the guest agent's /init costs a freshly restored clone, under the accelerator this host
 * uses. Every sample is a new clone of the `base` snapshot (restored, then left 300 ms so the restore itself is
 * not measured), sent one /init and then a Connect `Start` of `/bin/echo`; the baseline sends `Start` alone.
 * Under TCG a guest code path costs a translation the first time it runs in a clone, so a field whose work is
 * new to the clone shows up here (this is how the resolv.conf write on every create was found).
 *
 *   node tools/bench/run-bench.mjs tools/bench/guest-init-fields.bench.ts
 *   # BENCH_ITERATIONS=8 (per variant), BENCH_ONLY=baseline,token,... to run a subset
 */
import 'reflect-metadata';
import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { GUEST_ENTROPY_SEED_BYTES, type GuestInitBody } from '@kiln/contracts/guest-init';
import { initGuestAgent } from '../../apps/host-agent/src/guest-agent-client';
import { GUEST_AGENT_PORT } from '../../apps/host-agent/src/network';
import type { VmHandle } from '../../apps/host-agent/src/vmm';
import { envdProcess, firstStdoutByte } from './support/envd-process';
import { percentile, report } from './support/sample-stats';
import { benchCloneOptions, vmLayerForBench } from './support/vm-layer';

const ITERATIONS = Number(process.env.BENCH_ITERATIONS ?? 8);
const ONLY = process.env.BENCH_ONLY?.split(',');
const TOKEN = 'bench-token';
/** Time for the restore to settle before the clock starts: this bench measures the guest, not the restore. */
const SETTLE_MS = 300;

/** The /init body of each variant; undefined: no /init at all (the baseline). */
function variants(nameservers: string[]): Record<string, () => GuestInitBody | undefined> {
  return {
    baseline: () => undefined,
    empty: () => ({}),
    token: () => ({ accessToken: TOKEN }),
    clock: () => ({ timestamp: new Date().toISOString() }),
    entropy: () => ({ entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64') }),
    'resolvers (the snapshot\'s)': () => ({ nameservers }),
    'resolvers (others)': () => ({ nameservers: ['192.0.2.53'] }),
    'all (as a create sends it)': () => ({
      accessToken: TOKEN,
      envVars: {},
      timestamp: new Date().toISOString(),
      entropySeed: randomBytes(GUEST_ENTROPY_SEED_BYTES.sent).toString('base64'),
      nameservers,
    }),
  };
}

async function main(): Promise<void> {
  const workDir = await mkdtemp('/tmp/kiln-init-fields-bench-');
  const { pool, layers, snapshots, probe } = vmLayerForBench({ slotPrefix: 'kbif', slotCidr: '10.209.0.0/24', workDir });
  const live = new Set<VmHandle>();
  try {
    await pool.init();
    const snapshot = await snapshots.ensure('base');
    const resolvers = snapshot.manifest.guestNameservers;
    console.log(`accelerator ${(await probe.report()).accelerator}; template base/${snapshot.build.buildId}; resolvers in the snapshot: ${resolvers.join(', ')}`);
    const chosen = Object.entries(variants(resolvers)).filter(([name]) => !ONLY || ONLY.some((o) => name.startsWith(o)));
    const samples = new Map<string, { init: number[]; start: number[]; total: number[] }>(chosen.map(([name]) => [name, { init: [], start: [], total: [] }]));

    // Interleaved, so drift on a shared host hits every variant alike.
    for (let i = 0; i < ITERATIONS; i++) {
      for (const [name, body] of chosen) {
        const id = `kbif-${i}-${samples.get(name)!.total.length}-${randomBytes(2).toString('hex')}`;
        const slot = await pool.acquire();
        const layer = await layers.createLayer(id, snapshot.disk, workDir);
        const connections = new Agent({ keepAlive: true });
        let vm: VmHandle | undefined;
        try {
          vm = await snapshots.restore(snapshot, benchCloneOptions(workDir, id, slot, layer));
          live.add(vm);
          await new Promise((r) => setTimeout(r, SETTLE_MS));
          const init = body();
          const t0 = performance.now();
          if (init) await initGuestAgent(slot.hostAddress, connections, init, 30_000);
          const t1 = performance.now();
          const token: Record<string, string> = init?.accessToken ? { 'X-Access-Token': init.accessToken } : {};
          const t2 = t1 + (await firstStdoutByte(envdProcess(`http://${slot.hostAddress}:${GUEST_AGENT_PORT}`, token), t1));
          const row = samples.get(name)!;
          row.init.push(t1 - t0);
          row.start.push(t2 - t1);
          row.total.push(t2 - t0);
        } finally {
          connections.destroy();
          if (vm) {
            await vm.kill();
            live.delete(vm);
          }
          await layers.removeLayer(layer);
          await pool.release(slot);
        }
      }
    }

    console.log('\n== a fresh clone: /init with one field, then Start of echo -> first stdout byte ==');
    const baseline = samples.get('baseline');
    for (const [name, row] of samples) {
      report(`${name}: /init`, row.init, { width: 52 });
      report(`${name}: Start -> first byte`, row.start, { width: 52 });
      report(`${name}: total`, row.total, { width: 52 });
      if (baseline && name !== 'baseline') {
        const extra = percentile(row.total, 50) - percentile(baseline.total, 50);
        console.log(`${''.padEnd(52)} vs baseline at p50: ${extra >= 0 ? '+' : ''}${extra.toFixed(1)} ms`);
      }
    }
  } finally {
    for (const vm of live) await vm.kill().catch(() => undefined);
    await pool.destroyAll().catch(() => undefined);
    await rm(workDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error);
    process.exit(1);
  },
);
