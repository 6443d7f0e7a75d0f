import { DynamicModule, Global, Module } from '@nestjs/common';
import { ClassConstructor } from 'class-transformer';
import { loadConfig } from './load-config';

/**
 * Binds an app's validated env schema as an injectable: `constructor(private readonly env: GatewayEnv)`.
 * main.ts loads the config before Nest starts so a bad variable fails with one line.
 */
@Global()
@Module({})
export class ConfigModule {
  static forRoot<T extends object>(schema: ClassConstructor<T>, loaded?: T): DynamicModule {
    return {
      module: ConfigModule,
      providers: [{ provide: schema, useValue: loaded ?? loadConfig(schema) }],
      exports: [schema],
    };
  }
}
