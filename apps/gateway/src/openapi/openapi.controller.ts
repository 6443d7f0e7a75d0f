import { Controller, Get } from '@nestjs/common';
import { ApiExcludeController } from '@nestjs/swagger';
import type { OpenAPIObject } from '@nestjs/swagger';
import { PublicRoute } from '../auth/public-route.decorator';
import { OpenApiDocument } from './openapi-document';

@ApiExcludeController()
@PublicRoute()
@Controller()
export class OpenApiController {
  constructor(private readonly document: OpenApiDocument) {}

  @Get('openapi.json')
  get(): OpenAPIObject {
    return this.document.get();
  }
}
