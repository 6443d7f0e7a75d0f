export * from './artifact-store';
export * from './artifacts.errors';
export * from './local-artifact-store';
