import { ErrorCode, KilnError } from '@kiln/contracts';
import type { HostHeartbeat, HostView } from '@kiln/messaging';
import { FleetRegistration, FleetState } from './fleet-state';

class ManualClock {
  constructor(public ms = Date.UTC(2027, 0, 1)) {}
  now(): number {
    return this.ms;
  }
  advance(seconds: number): void {
    this.ms += seconds * 1000;
  }
}

const TIMING = { unhealthyAfterMs: 6_000, deadAfterMs: 12_000 };

function registration(hostId: string, overrides: Partial<FleetRegistration> = {}): FleetRegistration {
  return {
    hostId,
    grpcAddress: '10.0.0.1:50051',
    proxyUrl: 'http://10.0.0.1:5007',
    acceleration: 'kvm',
    version: '1.0.0',
    capacity: { vcpus: 8, memoryMib: 16384, sandboxes: 20, diskMib: 100_000 },
    templates: ['base'],
    readyCloneTemplates: ['base'],
    ...overrides,
  };
}

function heartbeat(hostId: string, sandboxes = 0): HostHeartbeat {
  return {
    hostId,
    at: new Date().toISOString(),
    capacity: { vcpus: 8, memoryMib: 16384, sandboxes: 20, diskMib: 100_000 },
    usage: { vcpus: sandboxes, memoryMib: 512 * sandboxes, sandboxes, diskMib: 0, diskUsedMib: 42, starting: 1 },
    templates: ['base', 'python'],
    readyCloneTemplates: ['python'],
    sandboxIds: [],
    agentVersion: '1.0.1',
  };
}

function setup() {
  const clock = new ManualClock();
  return { clock, fleet: new FleetState(TIMING, clock) };
}

describe('FleetState', () => {
  it('registers a new host ready, with a `registered` transition and no previous state', () => {
    const { fleet, clock } = setup();
    const { view, transition } = fleet.register(registration('h1'));
    expect(view).toMatchObject({ hostId: 'h1', state: 'ready', adminState: 'ready', capacity: { diskMib: 100_000 }, createSuccesses: 0 });
    expect(view.registeredAt).toBe(new Date(clock.ms).toISOString());
    expect(transition).toEqual({ kind: 'registered', hostId: 'h1', to: 'ready', reason: 'registered', at: view.registeredAt });
  });

  it('registers a host the monitor forgot in the admin state its DB row kept', () => {
    const { fleet } = setup();
    expect(fleet.register(registration('h1'), 'cordoned').view.state).toBe('cordoned');
  });

  it('refuses timing where a host would die before it is unhealthy', () => {
    expect(() => new FleetState({ unhealthyAfterMs: 5_000, deadAfterMs: 5_000 })).toThrow();
  });

  it('records a heartbeat in memory (usage, templates, version) without a transition for a live host', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    fleet.takeDirty();
    clock.advance(2);
    expect(fleet.heartbeat(heartbeat('h1', 3))).toEqual({ known: true });
    expect(fleet.get('h1')).toMatchObject({
      usage: { sandboxes: 3, vcpus: 3, diskUsedMib: 42, starting: 1 },
      templates: ['base', 'python'],
      readyCloneTemplates: ['python'],
      agentVersion: '1.0.1',
      lastHeartbeatAt: new Date(clock.ms).toISOString(),
    });
    expect(fleet.takeDirty().map((d) => d.hostId)).toEqual(['h1']);
    expect(fleet.takeDirty()).toEqual([]);
  });

  it('ignores heartbeats of hosts that never registered (heartbeats do not create hosts)', () => {
    const { fleet } = setup();
    expect(fleet.heartbeat(heartbeat('ghost'))).toEqual({ known: false });
    expect(fleet.get('ghost')).toBeUndefined();
  });

  it('ready → unhealthy after the unhealthy threshold of silence, → dead after the dead threshold', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    clock.advance(6);
    expect(fleet.sweep()).toEqual([]); // not yet *more* than 6 s
    clock.advance(0.5);
    const [unhealthy] = fleet.sweep();
    expect(unhealthy).toMatchObject({ kind: 'state-changed', hostId: 'h1', from: 'ready', to: 'unhealthy' });
    expect(fleet.sweep()).toEqual([]); // once per crossing
    clock.advance(6);
    const [dead] = fleet.sweep();
    expect(dead).toMatchObject({ from: 'unhealthy', to: 'dead' });
    expect(fleet.get('h1')).toMatchObject({ state: 'dead', adminState: 'ready', stateChangedAt: dead.at });
    clock.advance(60);
    expect(fleet.sweep()).toEqual([]);
  });

  it('a host silent past both thresholds between two sweeps goes straight to dead', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    clock.advance(13);
    expect(fleet.sweep()).toEqual([expect.objectContaining({ from: 'ready', to: 'dead' })]);
  });

  it('heartbeats keep a host live', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    for (let i = 0; i < 10; i++) {
      clock.advance(5);
      fleet.heartbeat(heartbeat('h1'));
      expect(fleet.sweep()).toEqual([]);
    }
    expect(fleet.get('h1')?.state).toBe('ready');
  });

  it.each(['unhealthy', 'dead'] as const)('a heartbeat from a %s host makes it live again (reason "heartbeat resumed")', (silentState) => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    clock.advance(silentState === 'dead' ? 13 : 7);
    fleet.sweep();
    expect(fleet.get('h1')?.state).toBe(silentState);
    clock.advance(1);
    const { transition } = fleet.heartbeat(heartbeat('h1'));
    expect(transition).toMatchObject({ kind: 'state-changed', from: silentState, to: 'ready', reason: 'heartbeat resumed' });
    expect(fleet.sweep()).toEqual([]);
  });

  it('a registration from a dead host makes it live again, as a `registered` transition from dead', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    clock.advance(13);
    fleet.sweep();
    const { transition } = fleet.register(registration('h1', { grpcAddress: '10.0.0.2:50051' }));
    expect(transition).toMatchObject({ kind: 'registered', from: 'dead', to: 'ready' });
    expect(fleet.get('h1')?.grpcAddress).toBe('10.0.0.2:50051');
  });

  it.each(['draining', 'cordoned'] as const)('set-status %s moves a live host at once, and back to ready', (adminState) => {
    const { fleet } = setup();
    fleet.register(registration('h1'));
    const { view, transition } = fleet.setAdminState('h1', adminState);
    expect(view).toMatchObject({ state: adminState, adminState });
    expect(transition).toMatchObject({ from: 'ready', to: adminState, reason: `set to ${adminState} by an operator` });
    expect(fleet.setAdminState('h1', 'ready').transition).toMatchObject({ from: adminState, to: 'ready' });
  });

  it('set-status to the state a host is in is no transition', () => {
    const { fleet } = setup();
    fleet.register(registration('h1'));
    expect(fleet.setAdminState('h1', 'ready').transition).toBeUndefined();
  });

  it('keeps the admin state across death: a drained host that dies comes back draining', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    fleet.setAdminState('h1', 'draining');
    clock.advance(13);
    expect(fleet.sweep()).toEqual([expect.objectContaining({ from: 'draining', to: 'dead' })]);
    expect(fleet.heartbeat(heartbeat('h1')).transition).toMatchObject({ from: 'dead', to: 'draining' });
    clock.advance(13);
    fleet.sweep();
    expect(fleet.register(registration('h1')).transition).toMatchObject({ from: 'dead', to: 'draining' });
  });

  it('set-status on a dead host changes its admin state only; it takes it when it returns', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('h1'));
    clock.advance(13);
    fleet.sweep();
    const { view, transition } = fleet.setAdminState('h1', 'cordoned');
    expect(transition).toBeUndefined();
    expect(view).toMatchObject({ state: 'dead', adminState: 'cordoned' });
    expect(fleet.takeDirty().map((d) => d.hostId)).toEqual(['h1']); // the KV entry shows the new intent
    expect(fleet.heartbeat(heartbeat('h1')).transition).toMatchObject({ from: 'dead', to: 'cordoned' });
  });

  it('an unknown host is not_found for set-status and remove', () => {
    const { fleet } = setup();
    for (const call of [() => fleet.setAdminState('nope', 'draining'), () => fleet.remove('nope')]) {
      expect(call).toThrow(KilnError);
      try {
        call();
      } catch (error) {
        expect((error as KilnError).code).toBe(ErrorCode.NotFound);
      }
    }
  });

  it('refuses to remove a live host with sandboxes (conflict), removes it once empty or dead', () => {
    const { fleet, clock } = setup();
    fleet.register(registration('busy'));
    fleet.heartbeat(heartbeat('busy', 2));
    expect(() => fleet.remove('busy')).toThrow(expect.objectContaining({ code: ErrorCode.Conflict }));
    fleet.heartbeat(heartbeat('busy', 0));
    expect(fleet.remove('busy').hostId).toBe('busy');
    expect(fleet.get('busy')).toBeUndefined();

    fleet.register(registration('lost'));
    fleet.heartbeat(heartbeat('lost', 5));
    clock.advance(7);
    fleet.sweep();
    expect(() => fleet.remove('lost')).toThrow(expect.objectContaining({ code: ErrorCode.Conflict })); // unhealthy is not dead
    clock.advance(6);
    fleet.sweep();
    expect(fleet.remove('lost').state).toBe('dead');
    expect(fleet.heartbeat(heartbeat('lost'))).toEqual({ known: false });
  });

  it('restart grace: restored hosts get a full window, dead ones stay dead, nothing revives without a heartbeat', () => {
    const { fleet, clock } = setup();
    const base = new FleetState(TIMING, clock);
    base.register(registration('live'));
    base.register(registration('sick'));
    base.register(registration('gone'));
    const views: HostView[] = base.views().map((view) => ({ ...view }));
    views.find((v) => v.hostId === 'sick')!.state = 'unhealthy';
    views.find((v) => v.hostId === 'gone')!.state = 'dead';
    // The monitor was down for an hour: the stored heartbeats are old, which must not kill anything.
    clock.advance(3600);
    fleet.restore(views);
    expect(fleet.sweep()).toEqual([]);
    expect(fleet.views().map((v) => [v.hostId, v.state])).toEqual([
      ['live', 'ready'],
      ['sick', 'unhealthy'],
      ['gone', 'dead'],
    ]);
    clock.advance(7);
    expect(fleet.sweep().map((t) => [t.hostId, t.from, t.to])).toEqual([['live', 'ready', 'unhealthy']]);
    clock.advance(6);
    expect(fleet.sweep().map((t) => [t.hostId, t.from, t.to])).toEqual([
      ['live', 'unhealthy', 'dead'],
      ['sick', 'unhealthy', 'dead'],
    ]);
  });

  it('counts creates per host and keeps the count across a re-registration', () => {
    const { fleet } = setup();
    fleet.register(registration('h1'));
    expect(fleet.countCreate('h1', 'succeeded')).toBe(true);
    expect(fleet.countCreate('ghost', 'succeeded')).toBe(false);
    expect(fleet.countCreate('h1', 'failed')).toBe(true);
    expect(fleet.countCreate('h1', 'failed')).toBe(true);
    expect(fleet.countCreate('ghost', 'failed')).toBe(false);
    fleet.register(registration('h1'));
    expect(fleet.get('h1')).toMatchObject({ createSuccesses: 1, createFails: 2 });
  });

  it('hands out dirty views as snapshots taken when asked', () => {
    const { fleet } = setup();
    fleet.register(registration('h1'));
    const [snapshot] = fleet.takeDirty();
    fleet.heartbeat(heartbeat('h1', 4));
    expect(JSON.parse(snapshot.json).usage.sandboxes).toBe(0);
    fleet.markDirty('h1');
    expect(JSON.parse(fleet.takeDirty()[0].json).usage.sandboxes).toBe(4);

    // One host's only, leaving the others' for the next flush.
    fleet.register(registration('h2'));
    fleet.heartbeat(heartbeat('h1', 5));
    expect(fleet.takeDirtyOf('h2').map((d) => d.hostId)).toEqual(['h2']);
    expect(fleet.takeDirtyOf('h2')).toEqual([]);
    expect(fleet.takeDirty().map((d) => d.hostId)).toEqual(['h1']);
  });
});
