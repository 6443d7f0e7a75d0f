export * from './ports';
export * from './private-servers';
