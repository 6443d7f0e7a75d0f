/**
 * The contract between the sandbox manager and a virtual machine monitor. It is shaped
 * so that QEMU microvm (QMP) and Firecracker (REST over a unix socket) both fit: a VM is
 * described once by a VmSpec, started cold or from a snapshot, and controlled through a
 * VmHandle whose lifetime ends when the VMM process is gone.
 */

export type VmAccelerator = 'kvm' | 'tcg';

export type DiskFormat = 'raw' | 'qcow2';

export interface VmDiskSpec {
  path: string;
  format: DiskFormat;
  readOnly?: boolean;
}

export interface VmNetworkSpec {
  /** Network namespace the VMM runs in, e.g. /run/netns/<name>. */
  netnsPath: string;
  /** Tap device inside that namespace. */
  tapName: string;
  /** Fixed guest MAC: restored clones keep the ARP state of the snapshot. */
  guestMac: string;
}

export interface VmMemoryFileSpec {
  /** File holding guest RAM. */
  path: string;
  /**
   * true: writes go to the file (template boot). false: private copy-on-write mapping,
   * the file is never modified (clones restored from a template snapshot).
   */
  share: boolean;
}

export interface VmSpec {
  /** Unique per host; names the VMM process. [A-Za-z0-9_-], at most 64 characters. */
  id: string;
  vcpus: number;
  memoryMib: number;
  kernelPath: string;
  initrdPath: string;
  kernelArgs: string;
  rootDisk: VmDiskSpec;
  network?: VmNetworkSpec;
  memoryFile?: VmMemoryFileSpec;
  /** Owned by the VM: pid file, control socket, spec, VMM log. Created if missing. */
  stateDir: string;
  serialLogPath: string;
  /** Defaults to the host's probed accelerator. */
  accelerator?: VmAccelerator;
}

export interface VmSnapshotRef {
  /** Device state written by VmHandle.snapshot() or VmHandle.checkpoint(). */
  statePath: string;
  /**
   * The guest pages a checkpointed VM had changed from its memory file (VmHandle.checkpoint()); written into the
   * restored VM before its device state is loaded. Absent: the memory file alone is the guest's RAM.
   */
  changedMemory?: ChangedMemoryFiles;
}

/** Guest pages that differ from the VM's memory file: the pages back to back, and their index (see guest-memory-pages). */
export interface ChangedMemoryFiles {
  pagesPath: string;
  indexPath: string;
}

/** A checkpoint of a running clone: what it wrote and how long the guest was stopped for it. */
export interface VmCheckpoint {
  statePath: string;
  stateBytes: number;
  changedMemory: ChangedMemoryFiles & { pages: number; bytes: number; runs: number; indexBytes: number };
  /** sha256 of each file, computed while it was written or straight after. */
  sha256: { state: string; pages: string; index: string };
  /** stop → everything written (the VM is still stopped when checkpoint() resolves). */
  durationMs: number;
  timings: { stopMs: number; deviceStateMs: number; memoryMs: number; syncMs: number };
}

export interface VmExit {
  /** Exit code when the VMM was our child; null when adopted or killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** How the exit was noticed or why it happened (e.g. 'process-exit', 'control-socket-closed'). */
  reason: string;
  at: Date;
}

export type VmRunState = 'running' | 'paused' | 'restoring' | 'exited' | 'other';

export interface VmSnapshotResult {
  statePath: string;
  stateBytes: number;
  durationMs: number;
}

export interface VmStartTimings {
  /** VMM process spawned → control channel ready. */
  controlReadyMs: number;
  /**
   * VMM process spawned → guest vCPUs running (or paused when startPaused). For a prepared
   * restore: PreparedRestore.start() called → running.
   */
  runningMs: number;
}

/**
 * A restore whose VMM process is already up with its devices (disk, tap, memory file)
 * attached, waiting for the snapshot: start() only loads device state and runs the guest.
 * Lets a caller keep warm VMMs per template and take process start-up off the create path.
 */
export interface PreparedRestore {
  /** Usable for kill()/exited while waiting; state() reports 'restoring'. */
  readonly handle: VmHandle;
  start(): Promise<VmHandle>;
}

export interface VmStartOptions {
  /** Leave the vCPUs stopped; call resume() to start them. */
  startPaused?: boolean;
  /** Deadline for the VMM to come up (and for a restore to finish loading). */
  timeoutMs?: number;
  /**
   * Run the VMM at the lowest CPU priority: work done ahead of demand (a clone being warmed for the pool) must
   * not slow down running sandboxes. VmHandle.setForeground() gives it normal priority.
   */
  background?: boolean;
}

export interface VmHandle {
  readonly id: string;
  readonly pid: number;
  readonly spec: VmSpec;
  /** Resolves exactly once, as soon as the VMM process is gone. Never rejects. */
  readonly exited: Promise<VmExit>;
  readonly hasExited: boolean;
  /** Present for VMs this driver instance started; adopted VMs have none. */
  readonly startTimings?: VmStartTimings;
  state(): Promise<VmRunState>;
  pause(): Promise<void>;
  resume(): Promise<void>;
  /** Normal CPU priority for every thread of the VMM (see VmStartOptions.background). */
  setForeground(): Promise<void>;
  /**
   * Saves device state to `statePath` (pausing first if needed; the VM stays paused).
   * With a shared memory file only device state is written, guest RAM stays in the file.
   */
  snapshot(statePath: string): Promise<VmSnapshotResult>;
  /**
   * Stops a clone (a VM on a private mapping of its memory file) and writes into `dir` its device state and the guest
   * pages it changed from the memory file: the bytes written follow the pages the guest wrote, not its RAM size. The
   * VM stays stopped: resume() it (fork, named snapshot) or end it (pause). `dir` must exist.
   */
  checkpoint(dir: string): Promise<VmCheckpoint>;
  /** Asks the VMM to exit cleanly (disks flushed); kills it after `timeoutMs`. */
  stop(timeoutMs?: number): Promise<VmExit>;
  /** SIGKILL. */
  kill(): Promise<VmExit>;
  /** Drops the control connection without touching the VM (agent shutdown); adopt() re-attaches. */
  detach(): void;
}

export interface VmmDriver {
  readonly name: string;
  /** Cold boot. Resolves once the guest is running (or paused with startPaused). */
  spawn(spec: VmSpec, options?: VmStartOptions): Promise<VmHandle>;
  /** Starts a VM from a snapshot taken by VmHandle.snapshot() with the same device layout. */
  restore(spec: VmSpec, snapshot: VmSnapshotRef, options?: VmStartOptions): Promise<VmHandle>;
  /** restore() in two steps: start the VMM now, load the snapshot when start() is called. */
  prepareRestore(spec: VmSpec, snapshot: VmSnapshotRef, options?: VmStartOptions): Promise<PreparedRestore>;
  /** Re-attaches to a VM that outlived the process that started it. */
  adopt(stateDir: string): Promise<VmHandle>;
  /**
   * Kills the VMM recorded in `stateDir` if that very process still runs (pid and start time match), without
   * its control channel: for leftovers nobody will adopt. Resolves true when there was one to kill.
   */
  terminate(stateDir: string): Promise<boolean>;
}

/** Nest injection token for the host's VmmDriver. */
export const VMM_DRIVER = Symbol('VMM_DRIVER');
