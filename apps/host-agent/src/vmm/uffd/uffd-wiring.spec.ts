import { Global, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { MetricsRegistry } from '@kiln/telemetry';
import { VmmModule } from '../vmm.module';
import { VmmConfig } from '../vmm.config';
import { UffdMetrics, UffdWorkerSupervisor } from '.';

/** The registry TelemetryModule provides in the agent (global there too). */
@Global()
@Module({ providers: [MetricsRegistry], exports: [MetricsRegistry] })
class MetricsRegistryModule {}

describe('VmmModule wiring of the UFFD worker', () => {
  it('provides the supervisor with VmmConfig.uffdWorkerBinary and registers the UFFD metrics on the agent registry', async () => {
    const moduleRef = await Test.createTestingModule({ imports: [MetricsRegistryModule, VmmModule] }).compile();
    const supervisor = moduleRef.get(UffdWorkerSupervisor);
    expect(supervisor.binaryPath).toBe(moduleRef.get(VmmConfig).uffdWorkerBinary);
    expect(moduleRef.get(UffdMetrics)).toBeInstanceOf(UffdMetrics);
    const text = await moduleRef.get(MetricsRegistry).registry.metrics();
    expect(text).toContain('\nkiln_uffd_workers 0\n');
    expect(text).toContain('\nkiln_uffd_fault_latency_seconds_bucket{le="+Inf"} 0\n');
    await moduleRef.close();
  });

  it('runs without a metrics registry (tools and harnesses): the supervisor still, no UFFD metrics', async () => {
    const moduleRef = await Test.createTestingModule({ imports: [VmmModule] }).compile();
    expect(moduleRef.get(UffdWorkerSupervisor)).toBeInstanceOf(UffdWorkerSupervisor);
    expect(moduleRef.get(UffdMetrics)).toBeNull();
    await moduleRef.close();
  });
});
