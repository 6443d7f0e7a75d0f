export * from './ports';
export * from './private-servers';
export * from './eventually';
export * from './restartable-servers';
export * from './tcp-relay';
export * from './seeded-random';
