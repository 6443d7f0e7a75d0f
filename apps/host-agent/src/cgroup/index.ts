export * from './cgroup.errors';
export * from './cgroup.module';
export type { CgroupBackend, CgroupLimits } from './cgroup-backend';
export { CgroupV1 } from './cgroup-v1';
export { CgroupV2 } from './cgroup-v2';
export { detectCgroupHost } from './cgroup-detect';
export { VmCgroupsConfig, type CgroupMode } from './vm-cgroups.config';
export { CGROUP_BACKEND, CPU_PERIOD_US, VmCgroups, type VmCgroupPlacement, type VmResources } from './vm-cgroups.service';
