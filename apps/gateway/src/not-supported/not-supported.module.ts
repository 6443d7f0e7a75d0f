import { Module } from '@nestjs/common';
import { SandboxesModule } from '../sandboxes/sandboxes.module';
import { NotSupportedController } from './not-supported.controller';

/** E2B routes Kiln does not implement yet, answered with a clear 501 instead of the router's 404. */
@Module({ imports: [SandboxesModule], controllers: [NotSupportedController] })
export class NotSupportedModule {}
