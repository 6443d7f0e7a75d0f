import { Injectable } from '@nestjs/common';
import type { Counter, Histogram } from 'prom-client';
import type { FleetHostState, HostView } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';

const STATES: readonly FleetHostState[] = ['ready', 'draining', 'cordoned', 'unhealthy', 'dead'];

/**
 * The fleet's Prometheus metrics. Per-host gauges are read from the fleet at scrape time (a removed host's series
 * disappear with it); counters and the lag histogram are pushed as heartbeats and transitions happen.
 */
@Injectable()
export class FleetMetrics {
  readonly heartbeats: Counter;
  readonly heartbeatLagSeconds: Histogram;
  readonly transitions: Counter<'from' | 'to'>;

  constructor(private readonly metrics: MetricsRegistry) {
    this.heartbeats = metrics.counter('kiln_host_heartbeats_total', 'Heartbeats the host monitor processed from registered hosts');
    this.heartbeatLagSeconds = metrics.histogram(
      'kiln_host_heartbeat_lag_seconds',
      "Time from a heartbeat's `at` (the agent's clock) to the monitor processing it",
      [],
      [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    );
    this.transitions = metrics.counter('kiln_host_transitions_total', 'Host state changes (from "none" for a new host)', ['from', 'to']);
  }

  /** Registers the scrape-time gauges over `views` (the fleet's current hosts). */
  observe(views: () => HostView[]): void {
    this.metrics.gauge('kiln_host_capacity', 'What each host offers sandboxes', ['host', 'resource'], (gauge) => {
      gauge.reset();
      for (const view of views()) {
        const host = view.hostId;
        gauge.set({ host, resource: 'vcpus' }, view.capacity.vcpus);
        gauge.set({ host, resource: 'memory_mib' }, view.capacity.memoryMib);
        gauge.set({ host, resource: 'disk_mib' }, view.capacity.diskMib);
        gauge.set({ host, resource: 'sandboxes' }, view.capacity.sandboxes);
      }
    });
    this.metrics.gauge('kiln_host_usage', "Each host's usage as its last heartbeat reported it", ['host', 'resource'], (gauge) => {
      gauge.reset();
      for (const view of views()) {
        const host = view.hostId;
        gauge.set({ host, resource: 'vcpus' }, view.usage.vcpus);
        gauge.set({ host, resource: 'memory_mib' }, view.usage.memoryMib);
        gauge.set({ host, resource: 'disk_mib' }, view.usage.diskMib);
        gauge.set({ host, resource: 'disk_used_mib' }, view.usage.diskUsedMib);
        gauge.set({ host, resource: 'sandboxes' }, view.usage.sandboxes);
        gauge.set({ host, resource: 'starting' }, view.usage.starting);
      }
    });
    this.metrics.gauge('kiln_host_state', "Each host's state (1 for the one it is in, 0 for the others)", ['host', 'state'], (gauge) => {
      gauge.reset();
      for (const view of views()) {
        for (const state of STATES) gauge.set({ host: view.hostId, state }, view.state === state ? 1 : 0);
      }
    });
  }
}
