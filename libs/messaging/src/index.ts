export * from './subjects';
export * from './messaging.client';
export * from './messaging-errors';
export * from './rpc-exception.filter';
export * from './nats-connection';
export * from './sandbox-event-stream';
export * from './messaging.module';
