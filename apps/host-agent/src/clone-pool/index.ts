export { ClonePool } from './clone-pool';
export { ClonePoolModule } from './clone-pool.module';
export { CLONE_POOL_OPTIONS, clonePoolSlots, type ClonePoolOptions } from './clone-pool.options';
export { CLONE_SERIAL_LOG, CLONE_VM_STATE_DIR, removeUnclaimedClones } from './clone-directories';
export type { RestoredClone } from './restored-clone';
