import { DynamicModule } from '@nestjs/common';
import { join } from 'node:path';
import { HostAgentEnv, ipListEntries } from '@kiln/config';
import { ClonePoolModule, clonePoolSlots, type ClonePoolOptions } from './clone-pool';
import { NetworkModule } from './network';
import { RootfsModule, RootfsOptions } from './rootfs';
import { SnapshotModule } from './snapshot';
import { TemplateModule } from './template';

/** Slots made beyond the sandbox limit: template boots also lease a slot while they snapshot. */
const TEMPLATE_BOOT_SLOTS = 2;

export interface HostResourceModules {
  network: DynamicModule;
  rootfs: DynamicModule;
  templates: DynamicModule;
  snapshots: DynamicModule;
  clones: DynamicModule;
}

/**
 * The host-resource modules, built once from the app's validated env so every feature
 * module that imports them shares one network pool, one layer store and one snapshot cache.
 */
export function hostResourceModules(env: HostAgentEnv): HostResourceModules {
  const clonePool: ClonePoolOptions = {
    dir: join(env.KILN_DATA_DIR, 'clones'),
    perTemplate: env.KILN_CLONE_POOL_SIZE,
    maxTemplates: env.KILN_CLONE_POOL_TEMPLATES,
    idleMs: env.KILN_CLONE_POOL_IDLE_MINUTES * 60_000,
    warm: env.KILN_CLONE_POOL_WARM,
  };
  const network = NetworkModule.register({
    namePrefix: env.KILN_NETWORK_PREFIX,
    slotCidr: env.KILN_SLOT_CIDR,
    prefill: env.KILN_NETWORK_PREFILL,
    maxSlots: env.KILN_MAX_SANDBOXES + TEMPLATE_BOOT_SLOTS + clonePoolSlots(clonePool),
    dnsResolvers: ipListEntries(env.KILN_GUEST_NAMESERVERS),
    openRanges: ipListEntries(env.KILN_EGRESS_OPEN_RANGES),
    egressProxyPort: env.KILN_EGRESS_PROXY_PORT,
  });
  const rootfs = RootfsModule.register({ driver: env.KILN_ROOTFS_DRIVER as RootfsOptions['driver'], vmm: 'qemu' });
  const templates = TemplateModule.register({ dataDir: env.KILN_DATA_DIR });
  const snapshots = SnapshotModule.register({ imports: [network], dataDir: env.KILN_DATA_DIR, guestNameservers: ipListEntries(env.KILN_GUEST_NAMESERVERS) });
  const clones = ClonePoolModule.register({ network, rootfs, snapshots }, clonePool);
  return { network, rootfs, templates, snapshots, clones };
}
