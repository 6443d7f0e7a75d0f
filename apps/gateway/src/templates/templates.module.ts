import { Module } from '@nestjs/common';
import { TemplatesController } from './templates.controller';
import { TemplatesService } from './templates.service';
import { SandboxesModule } from '../sandboxes/sandboxes.module';

@Module({ imports: [SandboxesModule], controllers: [TemplatesController], providers: [TemplatesService] })
export class TemplatesModule {}
