/** Base class for failures of the per-VM cgroup layer. */
export class CgroupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The configured cgroup version (KILN_VMM_CGROUP=v2|v1) is not usable on this host. */
export class CgroupUnavailableError extends CgroupError {}

/** Creating a VM's group, setting its limits or moving the VMM into it failed: the VM must not run unconfined. */
export class CgroupSetupError extends CgroupError {}
