/** Template build lifecycle. Values match the database enum. */
export enum BuildState {
  Waiting = 'waiting',
  Building = 'building',
  Ready = 'ready',
  Error = 'error',
}

export enum HostState {
  Registering = 'registering',
  Ready = 'ready',
  Draining = 'draining',
  Cordoned = 'cordoned',
  Unhealthy = 'unhealthy',
  Dead = 'dead',
  Offline = 'offline',
}
