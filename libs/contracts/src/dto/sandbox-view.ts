import type { SandboxNetworkSettings } from '../network/egress-policy';
import { SandboxState } from '../states/sandbox-state';

/** The scheduler's view of a sandbox, as returned over NATS to the gateway. */
export interface SandboxView {
  sandboxId: string;
  teamId: string;
  templateId: string;
  alias?: string;
  buildId?: string;
  hostId?: string;
  state: SandboxState;
  stateReason?: string;
  vcpus: number;
  memoryMib: number;
  diskMib: number;
  metadata: Record<string, string>;
  /** Every sandbox has one (E2B: "every sandbox secures envd access"); derived, never stored. */
  envdAccessToken: string;
  /** Needed on the sandbox's user ports when `network.allowPublicTraffic` is false; absent otherwise. */
  trafficAccessToken?: string;
  network: SandboxNetworkSettings;
  envdVersion: string;
  /** E2B lifecycle: pause (true) or kill at the timeout. */
  autoPause: boolean;
  /** Whether the pause at timeout keeps memory (E2B autoPauseMemory). */
  autoPauseMemory: boolean;
  /** Traffic resumes the sandbox while it is paused (E2B autoResume.enabled). */
  autoResume: boolean;
  startedAt: string;
  expiresAt: string;
  endedAt?: string;
}

/** Where traffic for a sandbox goes: the owning host agent's proxy. */
export interface SandboxRoute {
  sandboxId: string;
  teamId: string;
  state: SandboxState;
  proxyUrl: string;
  /** What the edge checks on envd-port requests (`X-Access-Token`, or a signature on `/files`). */
  envdAccessToken: string;
  /** Set when the sandbox's user ports are not public: requests need `e2b-traffic-access-token`. */
  trafficAccessToken?: string;
  /** Host header to send to user ports instead of the caller's (`${PORT}` is the port). */
  maskRequestHost?: string;
  /**
   * Set while the sandbox is paused (or pausing) and traffic may resume it: autoResume is on and its pause kept memory
   * (E2B: a disk-only pause is never resumed by traffic).
   */
  autoResume?: boolean;
}

/**
 * The envd protocol version Kiln's guest agent implements. The e2b SDK gates
 * features on it (closeStdin ≥ 0.5.2, octet-stream uploads ≥ 0.5.7, file metadata
 * ≥ 0.6.2, entry info in watch events ≥ 0.6.3, watching network mounts ≥ 0.6.4),
 * so it must only be raised together with the guest agent.
 */
export const ENVD_COMPAT_VERSION = '0.6.4';
