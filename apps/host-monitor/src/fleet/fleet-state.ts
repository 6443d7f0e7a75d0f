import type { FleetHostState, HostAdminState, HostHeartbeat, HostMachineInfo, HostRegistration, HostStateEventKind, HostView } from '@kiln/messaging';
import { HostBusyError, HostNotFoundError } from './fleet.errors';

/** How a create the host accepted ended: its `created` or `create_failed` lifecycle event. */
export type CreateOutcome = 'succeeded' | 'failed';

/** Milliseconds since the epoch; injectable so the state machine is tested without waiting. */
export interface FleetClock {
  now(): number;
}

export const SYSTEM_CLOCK: FleetClock = { now: () => Date.now() };

export interface FleetTiming {
  /** Silence after which a live host is `unhealthy`. */
  unhealthyAfterMs: number;
  /** Silence after which a host is `dead`. */
  deadAfterMs: number;
}

/** One change of a host's state, to be recorded (DB), shown (KV) and announced (JetStream) by the publisher. */
export interface FleetTransition {
  kind: Exclude<HostStateEventKind, 'removed'>;
  hostId: string;
  from?: FleetHostState;
  to: FleetHostState;
  reason: string;
  at: string;
}

/** What a registration carries into the fleet (validated and authenticated by the registration module). */
export type FleetRegistration = Pick<
  HostRegistration,
  'hostId' | 'grpcAddress' | 'proxyUrl' | 'acceleration' | 'version' | 'capacity' | 'templates' | 'readyCloneTemplates' | 'machine'
>;

/** What a restart knows of a host: its last KV view, or a view rebuilt from its DB row. */
export type RestoredHost = HostView;

interface TrackedHost {
  view: HostView;
  /** When the monitor last heard from the host (its clock, not the agent's). */
  lastSeenMs: number;
  /** The view changed since it was last written to KV. */
  dirty: boolean;
}

const LIVE_STATES: ReadonlySet<FleetHostState> = new Set(['ready', 'draining', 'cordoned']);

export function isLive(state: FleetHostState): boolean {
  return LIVE_STATES.has(state);
}

/**
 * The fleet as the monitor sees it, and the one place its state machine lives (pure: no I/O, an injected clock).
 *
 * A host's state is its admin state (`ready` | `draining` | `cordoned`, the operator's) while it is heard from;
 * `unhealthy` once silent for `unhealthyAfterMs`, `dead` once silent for `deadAfterMs`. Silence only ever makes a
 * state worse (a sweep never revives a host); a heartbeat or registration makes an unhealthy or dead host live again,
 * in its admin state, which survives all of this.
 */
export class FleetState {
  private readonly hosts = new Map<string, TrackedHost>();

  constructor(
    private readonly timing: FleetTiming,
    private readonly clock: FleetClock = SYSTEM_CLOCK,
  ) {
    if (!(timing.unhealthyAfterMs < timing.deadAfterMs)) throw new Error('unhealthyAfterMs must be below deadAfterMs');
  }

  /**
   * Takes over what a previous monitor knew, after a restart. Every host gets a full window from now (`lastSeen`
   * = now): the monitor was not listening, which says nothing about the hosts. Dead hosts stay dead until they are
   * heard from; an unhealthy one stays unhealthy (a sweep never revives) and dies only after a full window.
   */
  restore(hosts: RestoredHost[]): void {
    const now = this.clock.now();
    for (const view of hosts) {
      // Dirty: a view rebuilt from the DB (its KV entry was lost) is written back at the first flush.
      this.hosts.set(view.hostId, { view: { ...view }, lastSeenMs: now, dirty: true });
    }
  }

  /**
   * A host (re-)registered: its view is replaced by what it reports, its state becomes its admin state (new hosts:
   * `ready`, or `adminStateIfNew` from the DB for a host the monitor forgot). Always one transition: `registered`.
   */
  register(registration: FleetRegistration, adminStateIfNew: HostAdminState = 'ready'): { view: HostView; transition: FleetTransition } {
    const now = this.clock.now();
    const at = new Date(now).toISOString();
    const known = this.hosts.get(registration.hostId);
    const adminState = known?.view.adminState ?? adminStateIfNew;
    const from = known?.view.state;
    const capacity = {
      vcpus: registration.capacity.vcpus,
      memoryMib: registration.capacity.memoryMib,
      diskMib: registration.capacity.diskMib ?? 0,
      sandboxes: registration.capacity.sandboxes,
    };
    const view: HostView = {
      hostId: registration.hostId,
      grpcAddress: registration.grpcAddress,
      proxyUrl: registration.proxyUrl,
      acceleration: registration.acceleration,
      agentVersion: registration.version,
      state: adminState,
      adminState,
      stateChangedAt: from === adminState && known ? known.view.stateChangedAt : at,
      registeredAt: at,
      lastHeartbeatAt: at,
      capacity,
      // Until its first heartbeat a re-registering host's usage is the last one it reported.
      usage: known?.view.usage ?? { vcpus: 0, memoryMib: 0, diskMib: 0, sandboxes: 0, diskUsedMib: 0, starting: 0 },
      templates: [...registration.templates],
      readyCloneTemplates: [...(registration.readyCloneTemplates ?? [])],
      ...(registration.machine ? { machine: copyMachine(registration.machine) } : {}),
      createSuccesses: known?.view.createSuccesses ?? 0,
      createFails: known?.view.createFails ?? 0,
    };
    this.hosts.set(registration.hostId, { view, lastSeenMs: now, dirty: true });
    return { view, transition: { kind: 'registered', hostId: registration.hostId, ...(from ? { from } : {}), to: adminState, reason: 'registered', at } };
  }

  /**
   * A heartbeat from a registered host (the caller checked the subject): its usage and templates in memory, and if it
   * was unhealthy or dead, the transition back to its admin state. Undefined `known`: heartbeats do not create hosts.
   */
  heartbeat(heartbeat: HostHeartbeat): { known: boolean; transition?: FleetTransition } {
    const tracked = this.hosts.get(heartbeat.hostId);
    if (!tracked) return { known: false };
    const now = this.clock.now();
    const at = new Date(now).toISOString();
    const { view } = tracked;
    tracked.lastSeenMs = now;
    tracked.dirty = true;
    view.lastHeartbeatAt = at;
    view.capacity = {
      vcpus: heartbeat.capacity.vcpus,
      memoryMib: heartbeat.capacity.memoryMib,
      diskMib: heartbeat.capacity.diskMib ?? view.capacity.diskMib,
      sandboxes: heartbeat.capacity.sandboxes,
    };
    view.usage = {
      vcpus: heartbeat.usage.vcpus,
      memoryMib: heartbeat.usage.memoryMib,
      diskMib: heartbeat.usage.diskMib ?? 0,
      sandboxes: heartbeat.usage.sandboxes,
      diskUsedMib: heartbeat.usage.diskUsedMib ?? 0,
      starting: heartbeat.usage.starting ?? 0,
    };
    view.templates = heartbeat.templates;
    view.readyCloneTemplates = heartbeat.readyCloneTemplates ?? [];
    if (heartbeat.acceleration) view.acceleration = heartbeat.acceleration;
    if (heartbeat.agentVersion) view.agentVersion = heartbeat.agentVersion;
    if (isLive(view.state)) return { known: true };
    return { known: true, transition: this.moveTo(tracked, view.adminState, 'heartbeat resumed', at) };
  }

  /** Turns silence into state: every host whose silence crossed a threshold since the last sweep, worst first. */
  sweep(): FleetTransition[] {
    const now = this.clock.now();
    const at = new Date(now).toISOString();
    const transitions: FleetTransition[] = [];
    for (const tracked of this.hosts.values()) {
      const silentMs = now - tracked.lastSeenMs;
      const { state } = tracked.view;
      if (silentMs > this.timing.deadAfterMs) {
        if (state !== 'dead') transitions.push(this.moveTo(tracked, 'dead', `no heartbeat for ${Math.floor(silentMs / 1000)} s`, at));
      } else if (silentMs > this.timing.unhealthyAfterMs && isLive(state)) {
        transitions.push(this.moveTo(tracked, 'unhealthy', `no heartbeat for ${Math.floor(silentMs / 1000)} s`, at));
      }
    }
    return transitions;
  }

  /**
   * The operator's intent. A live host moves to it at once (a transition); an unhealthy or dead one keeps its state
   * and takes the admin state when it is heard from again (its view changes, no transition).
   */
  setAdminState(hostId: string, adminState: HostAdminState): { view: HostView; transition?: FleetTransition } {
    const tracked = this.tracked(hostId);
    const at = new Date(this.clock.now()).toISOString();
    tracked.view.adminState = adminState;
    tracked.dirty = true;
    if (!isLive(tracked.view.state) || tracked.view.state === adminState) return { view: tracked.view };
    return { view: tracked.view, transition: this.moveTo(tracked, adminState, `set to ${adminState} by an operator`, at) };
  }

  /**
   * Forgets a host. Refused while it is not dead and reports sandboxes (they would be orphaned: drain it first);
   * a dead host's sandboxes are lost anyway.
   */
  remove(hostId: string): HostView {
    const view = this.assertRemovable(hostId);
    this.hosts.delete(hostId);
    return view;
  }

  /** The host's view if `remove` would succeed; its error otherwise (checked before the durable removal). */
  assertRemovable(hostId: string): HostView {
    const { view } = this.tracked(hostId);
    if (view.state !== 'dead' && view.usage.sandboxes > 0) throw new HostBusyError(hostId, view.usage.sandboxes);
    return view;
  }

  /**
   * A sandbox create on the host ended (E2B's node counters createSuccesses/createFails); false for a host the monitor
   * does not know.
   */
  countCreate(hostId: string, outcome: CreateOutcome): boolean {
    const tracked = this.hosts.get(hostId);
    if (!tracked) return false;
    if (outcome === 'succeeded') tracked.view.createSuccesses += 1;
    else tracked.view.createFails += 1;
    tracked.dirty = true;
    return true;
  }

  get(hostId: string): HostView | undefined {
    return this.hosts.get(hostId)?.view;
  }

  /** The host's view, or HostNotFoundError. */
  require(hostId: string): HostView {
    return this.tracked(hostId).view;
  }

  views(): HostView[] {
    return [...this.hosts.values()].map((tracked) => tracked.view);
  }

  get size(): number {
    return this.hosts.size;
  }

  /** The views changed since the last call, as JSON snapshots taken now (so a later change cannot reorder writes). */
  takeDirty(): { hostId: string; json: string }[] {
    const changed: { hostId: string; json: string }[] = [];
    for (const tracked of this.hosts.values()) {
      if (!tracked.dirty) continue;
      tracked.dirty = false;
      changed.push({ hostId: tracked.view.hostId, json: JSON.stringify(tracked.view) });
    }
    return changed;
  }

  /** Like takeDirty, for one host (its write is queued behind that host's earlier writes only). */
  takeDirtyOf(hostId: string): { hostId: string; json: string }[] {
    const tracked = this.hosts.get(hostId);
    if (!tracked?.dirty) return [];
    tracked.dirty = false;
    return [{ hostId, json: JSON.stringify(tracked.view) }];
  }

  /** Marks a host's view to be written again (its last write failed). */
  markDirty(hostId: string): void {
    const tracked = this.hosts.get(hostId);
    if (tracked) tracked.dirty = true;
  }

  private tracked(hostId: string): TrackedHost {
    const tracked = this.hosts.get(hostId);
    if (!tracked) throw new HostNotFoundError(hostId);
    return tracked;
  }

  private moveTo(tracked: TrackedHost, to: FleetHostState, reason: string, at: string): FleetTransition {
    const from = tracked.view.state;
    tracked.view.state = to;
    tracked.view.stateChangedAt = at;
    tracked.dirty = true;
    return { kind: 'state-changed', hostId: tracked.view.hostId, from, to, reason, at };
  }
}

function copyMachine(machine: HostMachineInfo): HostMachineInfo {
  return {
    cpuModelName: machine.cpuModelName,
    cpuArchitecture: machine.cpuArchitecture,
    cpuCount: machine.cpuCount,
    memoryTotalMib: machine.memoryTotalMib,
  };
}
