import { Injectable, PipeTransform } from '@nestjs/common';
import { KilnError } from '@kiln/contracts';
import { NODE_ID_PATTERN, NODE_ID_RULE } from './node-request.dto';

/** Path parameter `nodeID`: a host id, rejected with a 400 naming it before the monitor is asked. */
@Injectable()
export class NodeIdPipe implements PipeTransform<unknown, string> {
  transform(value: unknown): string {
    if (typeof value !== 'string' || !NODE_ID_PATTERN.test(value)) throw KilnError.invalid(`nodeID ${NODE_ID_RULE}`);
    return value;
  }
}
