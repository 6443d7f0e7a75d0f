import { Controller } from '@nestjs/common';
import { MessagePattern } from '@nestjs/microservices';
import { PingReply, Subjects } from '@kiln/messaging';

/** Lets callers (gateway health, tests) prove the NATS path to the scheduler end to end. */
@Controller()
export class PingController {
  @MessagePattern(Subjects.schedulerPing)
  ping(): PingReply {
    return { service: 'scheduler', at: new Date().toISOString() };
  }
}
