import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma.service';

@Injectable()
export class TeamRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** Returns the team with this name, creating it when missing. */
  async ensure(name: string): Promise<{ id: string; name: string }> {
    return this.prisma.team.upsert({ where: { name }, update: {}, create: { name }, select: { id: true, name: true } });
  }

  /** Sets the team's own quota overrides; a null field falls back to the scheduler's default, an omitted one is kept. */
  async setQuota(teamId: string, quota: { maxConcurrentSandboxes?: number | null; maxVcpus?: number | null; maxMemoryMib?: number | null; maxDiskMib?: number | null }): Promise<void> {
    await this.prisma.team.update({ where: { id: teamId }, data: quota });
  }
}
