/**
 * The request and response bodies of the Firecracker API this driver uses, as the pinned release describes them
 * (FIRECRACKER_API_RELEASE; src/firecracker/swagger/firecracker.yaml of that tag). Only the fields Kiln sends or
 * reads are typed; every one is spelt as in the swagger, so a body built from these types is one that release accepts.
 */

/** The release whose API description these types follow (docs/firecracker.md records the commit). */
export const FIRECRACKER_API_RELEASE = 'v1.16.1';
/** Commit of the v1.16.1 tag in firecracker-microvm/firecracker. */
export const FIRECRACKER_API_COMMIT = '2038188f145fb81b8d098147a10e9d9f392fd22f';

/** PUT /machine-config (MachineConfiguration). */
export interface MachineConfiguration {
  /** 1..32; with smt only 1 or even. */
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  /** Needed for Diff snapshots: they hold the pages dirtied since the previous snapshot. */
  track_dirty_pages?: boolean;
  huge_pages?: 'None' | '2M';
}

/** PUT /boot-source (BootSource). Paths are as the jailed Firecracker sees them (inside its chroot). */
export interface BootSource {
  kernel_image_path: string;
  boot_args?: string;
  initrd_path?: string;
}

/** PUT /drives/{drive_id} (Drive), a virtio-block drive. */
export interface Drive {
  drive_id: string;
  is_root_device: boolean;
  is_read_only: boolean;
  path_on_host: string;
  cache_type?: 'Unsafe' | 'Writeback';
  io_engine?: 'Sync' | 'Async';
  partuuid?: string;
}

/** PUT /network-interfaces/{iface_id} (NetworkInterface). */
export interface NetworkInterface {
  iface_id: string;
  /** The tap device, in the network namespace the jailer joined. */
  host_dev_name: string;
  guest_mac?: string;
}

/** PUT /actions (InstanceActionInfo). */
export interface InstanceActionInfo {
  action_type: 'InstanceStart' | 'SendCtrlAltDel' | 'FlushMetrics';
}

/** PATCH /vm (Vm). */
export interface VmState {
  state: 'Paused' | 'Resumed';
}

/** PUT /snapshot/create (SnapshotCreateParams). Both paths are required in this release. */
export interface SnapshotCreateParams {
  snapshot_type?: 'Full' | 'Diff';
  snapshot_path: string;
  mem_file_path: string;
}

/** SnapshotLoadParams.mem_backend (MemoryBackend). */
export interface MemoryBackend {
  /** Uffd: backend_path is the unix socket of the page-fault handler; File: the memory file. */
  backend_type: 'Uffd' | 'File';
  backend_path: string;
}

/** SnapshotLoadParams.network_overrides[] (NetworkOverride). */
export interface NetworkOverride {
  iface_id: string;
  host_dev_name: string;
}

/** PUT /snapshot/load (SnapshotLoadParams), with mem_backend (the deprecated mem_file_path is never sent). */
export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend: MemoryBackend;
  /** Replaces the deprecated enable_diff_snapshots. */
  track_dirty_pages?: boolean;
  resume_vm?: boolean;
  network_overrides?: NetworkOverride[];
}

/** PUT /logger (Logger). */
export interface LoggerConfig {
  log_path?: string;
  level?: 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';
  show_level?: boolean;
  show_log_origin?: boolean;
}

/** GET / (InstanceInfo). */
export interface InstanceInfo {
  app_name: string;
  id: string;
  state: 'Not started' | 'Running' | 'Paused';
  vmm_version: string;
}

/** Body of every non-2xx answer (Error). */
export interface FirecrackerErrorBody {
  fault_message?: string;
}
