export * from './rootfs.errors';
export * from './rootfs.module';
export { ROOTFS_OPTIONS, DEFAULT_ROOTFS_OPTIONS, resolveRootfsOptions } from './rootfs.options';
export type { ImageFormat, RootfsDriverName, RootfsOptions, VmmKind } from './rootfs.options';
export { RootfsLayers } from './rootfs-layers';
export type { LayerUsage, RootfsLayer, SourceImage } from './rootfs-layers';
