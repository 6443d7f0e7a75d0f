export * from './cgroup.errors';
export * from './cgroup.module';
export type { CgroupBackend, CgroupLimits } from './cgroup-backend';
export { CgroupV1 } from './cgroup-v1';
export { CgroupV2 } from './cgroup-v2';
export { detectCgroupHost, type CgroupHost } from './cgroup-detect';
export { VmCgroupsConfig, type CgroupMode } from './vm-cgroups.config';
export {
  CGROUP_BACKEND,
  CPU_PERIOD_US,
  VM_GROUP_PREFIX,
  VmCgroups,
  vmGroupName,
  type VmCgroupPlacement,
  type VmResources,
} from './vm-cgroups.service';
