export * from './ports';
export * from './private-servers';
export * from './eventually';
