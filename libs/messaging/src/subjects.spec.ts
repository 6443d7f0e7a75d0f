import {
  hostHeartbeatSubject,
  hostIdOfHeartbeatSubject,
  hostIdOfRegisterSubject,
  hostRegisterSubject,
  sandboxEventSourceOf,
  sandboxEventSubject,
  sandboxEventSubjectsOf,
} from './subjects';

describe('subjects carrying a host id', () => {
  it.each(['host-a', 'node-1.cluster.local'])('round-trips host id %j through heartbeat, registration and event subjects', (hostId) => {
    expect(hostIdOfHeartbeatSubject(hostHeartbeatSubject(hostId))).toBe(hostId);
    expect(hostIdOfRegisterSubject(hostRegisterSubject(hostId))).toBe(hostId);
    expect(sandboxEventSourceOf(sandboxEventSubject('crashed', { hostId }))).toEqual({ hostId });
  });

  it("names the scheduler's events as its own, and no publisher for other forms", () => {
    expect(sandboxEventSubject('transition', 'scheduler')).toBe('kiln.events.sandbox.transition.scheduler');
    expect(sandboxEventSourceOf('kiln.events.sandbox.transition.scheduler')).toBe('scheduler');
    // The subjects of older agents (no publisher), a bare prefix, an empty host id token, another subject tree.
    for (const subject of ['kiln.events.sandbox.crashed', 'kiln.events.sandbox.crashed.host', 'kiln.events.sandbox.crashed.host..x', 'kiln.hosts.heartbeat.a']) {
      expect(sandboxEventSourceOf(subject)).toBeUndefined();
    }
    expect(hostIdOfHeartbeatSubject('kiln.hosts.heartbeat')).toBeUndefined();
    expect(hostIdOfHeartbeatSubject('kiln.scheduler.hosts.register.a')).toBeUndefined();
  });

  it("grants a host every kind of event under its own id only", () => {
    expect(sandboxEventSubjectsOf({ hostId: 'a.b' })).toBe('kiln.events.sandbox.*.host.a.b');
    expect(sandboxEventSubjectsOf('scheduler')).toBe('kiln.events.sandbox.*.scheduler');
  });
});
