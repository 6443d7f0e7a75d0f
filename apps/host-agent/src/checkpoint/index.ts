export * from './checkpoint.errors';
export * from './checkpoint-store';
