import type { NetworkSlot } from '../network';
import type { RootfsLayer } from '../rootfs';
import type { TemplateSnapshot } from '../snapshot';
import type { VmHandle } from '../vmm';

/**
 * A VM restored from a template snapshot and left paused: its VMM process, network slot, disk layer and
 * directory exist, the guest has not run a single instruction since the snapshot. Becoming a sandbox is
 * `vm.resume()` plus the guest agent's /init.
 */
export interface RestoredClone {
  /** Names the clone's directory, VMM process and disk layer; unrelated to the sandbox id it will get. */
  readonly cloneId: string;
  /** `<clones dir>/<cloneId>`: `vm/` (VMM state), `serial.log` and the disk layer. */
  readonly dir: string;
  readonly vmStateDir: string;
  readonly serialLogPath: string;
  readonly snapshot: TemplateSnapshot;
  readonly vm: VmHandle;
  readonly slot: NetworkSlot;
  readonly layer: RootfsLayer;
}
