import { Controller, Get, HttpCode, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import { DependencyHealth, HealthReport } from './dependency-health.service';

@Controller()
export class HealthController {
  constructor(private readonly health: DependencyHealth) {}

  /** 200 when every dependency answers, 503 otherwise, so probes and load balancers can act on it. */
  @Get('health')
  @HttpCode(200)
  async health_(@Res({ passthrough: true }) reply: FastifyReply): Promise<HealthReport> {
    const report = await this.health.report();
    if (report.status !== 'ok') reply.status(503);
    return report;
  }
}
