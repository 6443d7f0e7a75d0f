export * from './vmm-driver';
export * from './vmm.errors';
export * from './vmm.module';
export { VmmConfig } from './vmm.config';
export type { AcceleratorSetting } from './vmm.config';
export { AccelerationProbe } from './acceleration-probe';
export type { AccelerationReport } from './acceleration-probe';
export { QemuMicrovmDriver } from './qemu-microvm.driver';
export { QmpClient } from './qmp-client';
