import { SetMetadata } from '@nestjs/common';

export const PUBLIC_ROUTE = 'kiln:public-route';

/** Marks a handler or controller as reachable without an API key (health, the OpenAPI document). */
export const PublicRoute = (): ClassDecorator & MethodDecorator => SetMetadata(PUBLIC_ROUTE, true);
