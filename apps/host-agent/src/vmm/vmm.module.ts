import { Module } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { MetricsRegistry } from '@kiln/telemetry';
import { CgroupModule } from '../cgroup/cgroup.module';
import { TEMPLATE_STORE_OPTIONS, TemplateStore } from '../template/template-store';
import { AccelerationProbe } from './acceleration-probe';
import { FirecrackerDriver } from './firecracker/firecracker.driver';
import { QemuMicrovmDriver } from './qemu-microvm.driver';
import { VmmConfig } from './vmm.config';
import { VMM_DRIVER } from './vmm-driver';
import { UffdMetrics, UffdWorkerSupervisor } from './uffd';

/**
 * The host's VMM: the driver behind VMM_DRIVER (KILN_VMM: QEMU microvm, or Firecracker under its jailer) and the
 * acceleration probe. Configured from the agent's validated HostAgentEnv; a context without one (a test
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
    FirecrackerDriver,
    // Both are cheap to construct (nothing runs until a VM is started); only the configured one is handed out.
    {
      provide: VMM_DRIVER,
      useFactory: (config: VmmConfig, qemu: QemuMicrovmDriver, firecracker: FirecrackerDriver) => (config.vmm === 'firecracker' ? firecracker : qemu),
      inject: [VmmConfig, QemuMicrovmDriver, FirecrackerDriver],
    },
    { provide: UffdWorkerSupervisor, useFactory: (config: VmmConfig) => new UffdWorkerSupervisor(config.uffdWorkerBinary), inject: [VmmConfig] },
    // Only where the agent serves /metrics (TelemetryModule); tools and harnesses run the VMM without a registry.
    {
      provide: UffdMetrics,
      useFactory: (supervisor: UffdWorkerSupervisor, metrics?: MetricsRegistry) => (metrics ? new UffdMetrics(metrics, supervisor) : null),
      inject: [UffdWorkerSupervisor, { token: MetricsRegistry, optional: true }],
    },
  ],
  exports: [VMM_DRIVER, AccelerationProbe, VmmConfig, UffdWorkerSupervisor],
})
export class VmmModule {}
