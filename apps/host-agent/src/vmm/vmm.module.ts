import { Module } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { CgroupModule } from '../cgroup/cgroup.module';
import { TEMPLATE_STORE_OPTIONS, TemplateStore } from '../template/template-store';
import { AccelerationProbe } from './acceleration-probe';
import { QemuMicrovmDriver } from './qemu-microvm.driver';
import { VmmConfig } from './vmm.config';
import { VMM_DRIVER } from './vmm-driver';

/**
 * The host's VMM: the driver behind VMM_DRIVER (QEMU microvm today) and the acceleration
 * probe. Configured from the agent's validated HostAgentEnv; a context without one (a test
 * harness) validates the same variables from the environment.
 */
@Module({
  imports: [CgroupModule],
  providers: [
    {
      provide: VmmConfig,
      useFactory: (env?: HostAgentEnv) => (env ? VmmConfig.from(env) : VmmConfig.fromEnv()),
      inject: [{ token: HostAgentEnv, optional: true }],
    },
    // The probe boots a template: the store of the same data dir as the VMM's config, not one read from elsewhere.
    { provide: TEMPLATE_STORE_OPTIONS, useFactory: (config: VmmConfig) => ({ dataDir: config.dataDir }), inject: [VmmConfig] },
    TemplateStore,
    AccelerationProbe,
    QemuMicrovmDriver,
    { provide: VMM_DRIVER, useExisting: QemuMicrovmDriver },
  ],
  exports: [VMM_DRIVER, AccelerationProbe, VmmConfig],
})
export class VmmModule {}
