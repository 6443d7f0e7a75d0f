import { GATEWAY_IP, GUEST_IP, PREFIX, type NetworkSlot } from '../network';
import type { VmDiskSpec, VmMemoryFileSpec, VmSpec } from '../vmm';
import type { TemplateBuild } from './template-store';

export interface ColdBootPlacement {
  id: string;
  rootDisk: VmDiskSpec;
  slot: Pick<NetworkSlot, 'netnsPath' | 'tapName' | 'guestMac'>;
  stateDir: string;
  serialLogPath: string;
  memoryFile?: VmMemoryFileSpec;
}

/**
 * The VM spec that boots a template build from its kernel: the build's shape and kernel command line plus the
 * guest's fixed slot address (the guest init reads kiln.ip/kiln.gw). Restores reuse the snapshot's own spec instead.
 */
export function coldBootSpec(build: TemplateBuild, placement: ColdBootPlacement): VmSpec {
  return {
    id: placement.id,
    vcpus: build.vcpus,
    memoryMib: build.memoryMib,
    kernelPath: build.kernelPath,
    initrdPath: build.initrdPath,
    kernelArgs: `${build.kernelArgs} kiln.ip=${GUEST_IP}/${PREFIX} kiln.gw=${GATEWAY_IP}`,
    rootDisk: placement.rootDisk,
    network: { netnsPath: placement.slot.netnsPath, tapName: placement.slot.tapName, guestMac: placement.slot.guestMac },
    memoryFile: placement.memoryFile,
    stateDir: placement.stateDir,
    serialLogPath: placement.serialLogPath,
  };
}
