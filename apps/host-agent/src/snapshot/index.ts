export * from './snapshot.errors';
export * from './snapshot.module';
export { SNAPSHOT_NETWORK, SNAPSHOT_OPTIONS, TemplateSnapshots } from './template-snapshots';
export { sha256File } from '../file-integrity';
export type {
  CloneOptions,
  SnapshotManifest,
  SnapshotNetwork,
  SnapshotOptions,
  TemplateSnapshot,
} from './template-snapshots';
export { TemplateSnapshotReadiness } from './template-snapshot-readiness';
export type { SnapshotRetryPolicy, SnapshotSource, TemplateSnapshotState, TemplateSnapshotStatus } from './template-snapshot-readiness';
