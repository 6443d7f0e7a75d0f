import { Injectable } from '@nestjs/common';
import type { INestApplication } from '@nestjs/common';
import { DocumentBuilder, OpenAPIObject, SwaggerModule } from '@nestjs/swagger';
import { NewSandboxDto, PauseSandboxDto, ResumeSandboxDto, SandboxForkDto, SandboxRefreshDto, SandboxSnapshotDto, SandboxTimeoutDto } from '@kiln/contracts';
import { JoinTokenCreateDto, NodeStatusChangeDto } from '../admin/node-request.dto';
import { documentFromValidation } from './validation-schema';

const REQUEST_DTOS = [NewSandboxDto, SandboxTimeoutDto, SandboxRefreshDto, ResumeSandboxDto, PauseSandboxDto, SandboxForkDto, SandboxSnapshotDto, NodeStatusChangeDto, JoinTokenCreateDto];

/** The OpenAPI description of the routes this gateway actually serves, built once at start-up from its controllers. */
@Injectable()
export class OpenApiDocument {
  private document?: OpenAPIObject;

  build(app: INestApplication): OpenAPIObject {
    for (const dto of REQUEST_DTOS) documentFromValidation(dto);
    const config = new DocumentBuilder()
      .setTitle('Kiln API')
      .setDescription('E2B-compatible sandbox API. Errors are {code, message, error_code}.')
      .setVersion('0.1.0')
      .addApiKey({ type: 'apiKey', in: 'header', name: 'X-API-Key' }, 'ApiKeyAuth')
      // The admin API (/nodes): disabled unless the deployment sets KILN_ADMIN_TOKEN.
      .addApiKey({ type: 'apiKey', in: 'header', name: 'X-Admin-Token' }, 'AdminApiKeyAuth')
      .build();
    this.document = SwaggerModule.createDocument(app, config);
    return this.document;
  }

  get(): OpenAPIObject {
    if (!this.document) throw new Error('OpenAPI document requested before the app was configured');
    return this.document;
  }
}
