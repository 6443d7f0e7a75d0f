export * from './load-config';
export * from './startup';
export * from './env/validators';
export * from './env/service-env';
export * from './config.module';
