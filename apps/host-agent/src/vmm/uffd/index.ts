export { UffdWorkerSupervisor } from './uffd-worker.supervisor';
export type { UffdWorkerProcess, UffdWorkerExit, UffdWorkerRecord, UffdWorkerStartOptions } from './uffd-worker.supervisor';
export { parseUffdWorkerStats } from './uffd-worker.stats';
export type { UffdWorkerStats, UffdWorkerState, UffdFaultLatencyHistogram } from './uffd-worker.stats';
export { UffdMetrics } from './uffd-metrics';
export * from './uffd.errors';
