import { Injectable } from '@nestjs/common';
import { PrismaService } from '../prisma.service';

@Injectable()
export class TeamRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** Returns the team with this name, creating it when missing. */
  async ensure(name: string): Promise<{ id: string; name: string }> {
    return this.prisma.team.upsert({ where: { name }, update: {}, create: { name }, select: { id: true, name: true } });
  }
}
