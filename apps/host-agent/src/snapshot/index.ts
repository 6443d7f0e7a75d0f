export * from './snapshot.errors';
export * from './snapshot.module';
export { SNAPSHOT_NETWORK, SNAPSHOT_OPTIONS, TemplateSnapshots, sha256File } from './template-snapshots';
export type {
  CloneOptions,
  SnapshotManifest,
  SnapshotNetwork,
  SnapshotOptions,
  TemplateSnapshot,
} from './template-snapshots';
