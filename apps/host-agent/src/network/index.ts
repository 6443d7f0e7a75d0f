export * from './network.constants';
export * from './network.errors';
export * from './network.module';
export { NETWORK_OPTIONS, DEFAULT_NETWORK_OPTIONS, resolveNetworkOptions } from './network.options';
export type { NetworkOptions, ResolvedNetworkOptions } from './network.options';
export type { NetworkSlot } from './network-slot';
export { NetworkSlotPool } from './network-slot-pool';
export type { SlotPoolStats, SlotReconcileReport } from './network-slot-pool';
