import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { LocalArtifactStore } from '@kiln/artifacts';
import { BuildState, TemplateBuildDefinition } from '@kiln/contracts';
import type { Prisma, PrismaService } from '@kiln/db';
import type { BuildTemplateEvent } from '@kiln/proto/hostagent';

/** A template id as the gateway makes them (E2B style: 20 of [a-z0-9]). */
export function newTemplateId(): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(randomBytes(20), (b) => alphabet[b % alphabet.length]).join('');
}

/** A registered host the host monitor holds `ready`. */
export async function seedHost(prisma: PrismaService, hostId: string, address: string, memoryMib = 8192): Promise<void> {
  const data = {
    address,
    proxyUrl: 'http://127.0.0.1:1',
    state: 'ready' as const,
    vcpuCapacity: 4,
    memoryMibCapacity: memoryMib,
    sandboxCapacity: 10,
    lastHeartbeatAt: new Date(),
  };
  await prisma.host.upsert({ where: { id: hostId }, update: data, create: { id: hostId, ...data } });
}

export interface SeededBuild {
  teamId: string;
  templateId: string;
  buildId: string;
}

/** A team's template with one build as the gateway leaves it after `POST /v2/templates/{id}/builds/{buildID}`. */
export async function seedBuild(
  prisma: PrismaService,
  definition: TemplateBuildDefinition | null,
  options: { teamName?: string; state?: BuildState; cancelRequested?: boolean; tags?: string[] } = {},
): Promise<SeededBuild> {
  const team = await prisma.team.upsert({ where: { name: options.teamName ?? 'builders' }, update: {}, create: { name: options.teamName ?? 'builders' } });
  const templateId = newTemplateId();
  await prisma.template.create({ data: { id: templateId, teamId: team.id, vcpus: 2, memoryMib: 1024, diskMib: 2048 } });
  const build = await prisma.templateBuild.create({
    data: {
      templateId,
      state: options.state ?? BuildState.Waiting,
      vcpus: 2,
      memoryMib: 1024,
      diskMib: 2048,
      cancelRequested: options.cancelRequested ?? false,
      ...(definition ? { definition: definition as unknown as Prisma.InputJsonValue } : {}),
    },
  });
  for (const tag of options.tags ?? []) await prisma.templateTag.create({ data: { templateId, tag, buildId: build.id } });
  return { teamId: team.id, templateId, buildId: build.id };
}

/** Uploads a COPY archive as the gateway does: the artifact plus its template_files row. */
export async function seedFiles(prisma: PrismaService, artifacts: LocalArtifactStore, teamId: string, filesHash: string, body = 'an archive'): Promise<string> {
  const info = await artifacts.write(`files/${teamId}/${filesHash}`, Readable.from([Buffer.from(body)]));
  await prisma.templateFile.create({ data: { teamId, filesHash, sha256: info.sha256, bytes: BigInt(info.bytes) } });
  return info.sha256;
}

/** The definition of E2B's `Template().fromTemplate('base').copy('app.sh', '/srv/').runCmd(...)...setStartCmd(...)`. */
export function definitionWithCopy(filesHash: string): TemplateBuildDefinition {
  return {
    fromTemplate: 'base',
    baseTemplate: { templateId: 'base', buildId: '00000000-0000-4000-8000-000000000001', hostBuildId: 'base-build-1' },
    force: false,
    steps: [
      { type: 'RUN', args: ['apt-get install -y jq', 'root'], force: false },
      { type: 'COPY', args: ['app.sh', '/srv/'], filesHash, force: false },
      { type: 'ENV', args: ['GREETING', 'hi'], force: false },
    ],
    startCmd: 'python3 -m http.server 8000',
    readyCmd: 'curl -sf localhost:8000',
  };
}

/** What a host streams for a successful build of `definitionWithCopy` (3 steps): logs, steps (the first cached), result. */
export function readyEvents(): BuildTemplateEvent[] {
  const at = Date.now();
  return [
    { log: { level: 'info', message: 'base template base-build-1', step: 0, atMs: at } },
    { step: { step: 0, cached: true, layerKey: 'k0', durationMs: 0 } },
    { step: { step: 1, cached: true, layerKey: 'k1', durationMs: 0 } },
    { log: { level: 'info', message: "'app.sh' -> '/srv/app.sh'", step: 2, atMs: at + 1 } },
    { step: { step: 2, cached: false, layerKey: 'k2', durationMs: 1500 } },
    { step: { step: 3, cached: false, layerKey: 'k3', durationMs: 10 } },
    { log: { level: 'info', message: 'snapshot taken', step: 4, atMs: at + 2 } },
    {
      result: {
        artifacts: [{ name: 'rootfs.ext4', bytes: 1048576, sha256: 'a'.repeat(64) }],
        diskMib: 1536,
        envdVersion: '0.6.4',
        envs: { GREETING: 'hi' },
        workdir: '/srv',
        user: 'user',
        startCmd: 'python3 -m http.server 8000',
        readyCmd: 'curl -sf localhost:8000',
        vcpus: 2,
        memoryMib: 1024,
      },
    },
  ];
}
