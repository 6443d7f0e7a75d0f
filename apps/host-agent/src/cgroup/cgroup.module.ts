import { Module } from '@nestjs/common';
import { HostAgentEnv } from '@kiln/config';
import { VmCgroupsConfig } from './vm-cgroups.config';
import { VmCgroups } from './vm-cgroups.service';

/**
 * Per-VM cgroups (cpu, memory, pids). Configured from the agent's HostAgentEnv; a context without one (a test
 * harness, a benchmark) validates the same variables from the environment.
 */
@Module({
  providers: [
    {
      provide: VmCgroupsConfig,
      useFactory: (env?: HostAgentEnv) => (env ? VmCgroupsConfig.from(env) : VmCgroupsConfig.fromEnv()),
      inject: [{ token: HostAgentEnv, optional: true }],
    },
    VmCgroups,
  ],
  exports: [VmCgroups, VmCgroupsConfig],
})
export class CgroupModule {}
