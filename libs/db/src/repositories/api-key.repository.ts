import { Injectable } from '@nestjs/common';
import { displayPrefixOf, generateApiKey, hashApiKey } from '@kiln/contracts';
import { PrismaService } from '../prisma.service';

export interface AuthenticatedTeam {
  teamId: string;
  apiKeyId: string;
}

@Injectable()
export class ApiKeyRepository {
  constructor(private readonly prisma: PrismaService) {}

  /** Looks a presented key up by its hash; revoked keys authenticate nothing. */
  async authenticate(presentedKey: string): Promise<AuthenticatedTeam | null> {
    const key = await this.prisma.apiKey.findUnique({
      where: { keyHash: hashApiKey(presentedKey) },
      select: { id: true, teamId: true, revokedAt: true },
    });
    if (!key || key.revokedAt) return null;
    return { teamId: key.teamId, apiKeyId: key.id };
  }

  /** Creates a key and returns the only copy of its secret. */
  async create(teamId: string, name: string): Promise<{ id: string; key: string; prefix: string }> {
    const key = generateApiKey();
    const row = await this.prisma.apiKey.create({
      data: { teamId, name, keyHash: hashApiKey(key), keyPrefix: displayPrefixOf(key) },
    });
    return { id: row.id, key, prefix: row.keyPrefix };
  }

  async revoke(id: string): Promise<void> {
    await this.prisma.apiKey.update({ where: { id }, data: { revokedAt: new Date() } });
  }
}
