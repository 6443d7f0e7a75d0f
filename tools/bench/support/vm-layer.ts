import { join } from 'node:path';
import { DEFAULT_GUEST_NAMESERVERS, ipListEntries } from '@kiln/config';
import { NetworkSlotPool, resolveNetworkOptions, type NetworkSlot } from '../../../apps/host-agent/src/network';
import { SlotProvisioner } from '../../../apps/host-agent/src/network/slot-provisioner';
import { RootfsLayers, resolveRootfsOptions, type RootfsLayer } from '../../../apps/host-agent/src/rootfs';
import { FlattenedImages } from '../../../apps/host-agent/src/rootfs/flattened-images';
import { ReflinkSupport } from '../../../apps/host-agent/src/rootfs/reflink-support';
import { TemplateSnapshots, type CloneOptions } from '../../../apps/host-agent/src/snapshot';
import { TemplateStore } from '../../../apps/host-agent/src/template';
import { AccelerationProbe, QemuMicrovmDriver, VmmConfig } from '../../../apps/host-agent/src/vmm';

/**
 * The host agent's VM layer (slots, disk layers, driver, snapshots) wired by hand: benches are bundled by
 * esbuild, which emits no decorator metadata for Nest's injector. Private slot prefix and CIDR per bench.
 */
export function vmLayerForBench(options: { slotPrefix: string; slotCidr: string; workDir: string; bootTimeoutMs?: number; dataDir?: string }) {
  const networkOptions = resolveNetworkOptions({ namePrefix: options.slotPrefix, slotCidr: options.slotCidr, prefill: 2, maxIdle: 8 });
  const pool = new NetworkSlotPool(networkOptions, new SlotProvisioner(networkOptions));
  const rootfsOptions = resolveRootfsOptions({ driver: 'qcow2', vmm: 'qemu' });
  const layers = new RootfsLayers(rootfsOptions, new ReflinkSupport(), new FlattenedImages(rootfsOptions));
  // A data dir of the bench's own (its templates and snapshots) instead of KILN_DATA_DIR's.
  const config = VmmConfig.fromEnv(options.dataDir ? { ...process.env, KILN_DATA_DIR: options.dataDir } : process.env);
  const templates = new TemplateStore({ dataDir: config.dataDir });
  const probe = new AccelerationProbe(config, templates);
  const driver = new QemuMicrovmDriver(config, probe);
  const snapshots = new TemplateSnapshots(templates, driver, pool, {
    bootTimeoutMs: options.bootTimeoutMs ?? 180_000,
    runDir: join(options.workDir, 'template-boot'),
    guestNameservers: ipListEntries(process.env.KILN_GUEST_NAMESERVERS ?? DEFAULT_GUEST_NAMESERVERS),
  });
  return { pool, layers, config, templates, probe, driver, snapshots };
}

/** A clone of a bench's own: state and serial log in `workDir`, on the given slot and disk layer. */
export function benchCloneOptions(workDir: string, id: string, slot: NetworkSlot, layer: RootfsLayer): CloneOptions {
  return {
    id,
    stateDir: join(workDir, id),
    serialLogPath: join(workDir, `${id}.log`),
    rootDisk: { path: layer.path, format: layer.format },
    network: { netnsPath: slot.netnsPath, tapName: slot.tapName, guestMac: slot.guestMac },
  };
}
