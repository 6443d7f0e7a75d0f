import { DynamicModule } from '@nestjs/common';
import { join } from 'node:path';
import { HostAgentEnv, ipListEntries } from '@kiln/config';
import { ClonePoolModule, clonePoolSlots, type ClonePoolOptions } from './clone-pool';
import { NetworkModule } from './network';
import { RootfsModule, RootfsOptions } from './rootfs';
import { SnapshotModule } from './snapshot';
import { TemplateModule } from './template';
import { BaseLayersConfig, BaseLayersModule } from './template-build/base-layers';
import { TemplateBuildModule } from './template-build';

/** Slots made beyond the sandbox limit: template boots also lease a slot while they snapshot. */
const TEMPLATE_BOOT_SLOTS = 2;

export interface HostResourceModules {
  network: DynamicModule;
  rootfs: DynamicModule;
  templates: DynamicModule;
  snapshots: DynamicModule;
  clones: DynamicModule;
  /** Template builds (BuildTemplate) and the artifact store they publish to. */
  templateBuilds: DynamicModule;
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
    // Template builds hold a slot each on top: a build never takes a sandbox's place.
    maxSlots: env.KILN_MAX_SANDBOXES + TEMPLATE_BOOT_SLOTS + clonePoolSlots(clonePool) + env.KILN_TEMPLATE_BUILD_CONCURRENCY,
    dnsResolvers: ipListEntries(env.KILN_GUEST_NAMESERVERS),
    openRanges: ipListEntries(env.KILN_EGRESS_OPEN_RANGES),
    egressProxyPort: env.KILN_EGRESS_PROXY_PORT,
  });
  const rootfs = RootfsModule.register({ driver: env.KILN_ROOTFS_DRIVER as RootfsOptions['driver'], vmm: 'qemu' });
  const templates = TemplateModule.register({ dataDir: env.KILN_DATA_DIR });
  const snapshots = SnapshotModule.register({
    imports: [network],
    dataDir: env.KILN_DATA_DIR,
    guestNameservers: ipListEntries(env.KILN_GUEST_NAMESERVERS),
    readyTimeoutMs: env.KILN_TEMPLATE_READY_TIMEOUT_SECONDS * 1000,
  });
  const clones = ClonePoolModule.register({ network, rootfs, snapshots }, clonePool);
  const templateBuilds = TemplateBuildModule.register(
    { network, templates, snapshots, baseLayers: BaseLayersModule.register({ config: BaseLayersConfig.from(env), templates }) },
    {
      dataDir: env.KILN_DATA_DIR,
      artifactDir: env.KILN_ARTIFACT_DIR,
      concurrency: env.KILN_TEMPLATE_BUILD_CONCURRENCY,
      stepTimeoutMs: env.KILN_TEMPLATE_BUILD_STEP_TIMEOUT_SECONDS * 1000,
      bootTimeoutMs: 120_000,
      guestNameservers: ipListEntries(env.KILN_GUEST_NAMESERVERS),
      runtimeTemplateId: 'base',
    },
  );
  return { network, rootfs, templates, snapshots, clones, templateBuilds };
}
