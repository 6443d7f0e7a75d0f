import { EgressPolicy, ENVD_COMPAT_VERSION, SandboxNetworkSettings, SandboxState, SandboxView } from '@kiln/contracts';
import { SandboxRecord } from '@kiln/db';
import type { SandboxTokens } from './sandbox-tokens';

export function networkOf(record: SandboxRecord): SandboxNetworkSettings {
  const egress = (record.egress ?? {}) as Partial<EgressPolicy>;
  return {
    egress: { allowOut: egress.allowOut ?? [], denyOut: egress.denyOut ?? [] },
    allowInternetAccess: record.allowInternetAccess,
    allowPublicTraffic: record.allowPublicTraffic,
    ...(record.maskRequestHost ? { maskRequestHost: record.maskRequestHost } : {}),
  };
}

export function toSandboxView(record: SandboxRecord, tokens: SandboxTokens): SandboxView {
  return {
    sandboxId: record.id,
    teamId: record.teamId,
    templateId: record.templateId,
    alias: record.alias ?? undefined,
    buildId: record.buildId ?? undefined,
    hostId: record.hostId ?? undefined,
    state: record.state as SandboxState,
    stateReason: record.stateReason ?? undefined,
    vcpus: record.vcpus,
    memoryMib: record.memoryMib,
    diskMib: record.diskMib,
    metadata: (record.metadata ?? {}) as Record<string, string>,
    envdAccessToken: tokens.envdAccessToken(record.id),
    ...(record.allowPublicTraffic ? {} : { trafficAccessToken: tokens.trafficAccessToken(record.id) }),
    network: networkOf(record),
    envdVersion: ENVD_COMPAT_VERSION,
    autoPause: record.autoPause,
    autoPauseMemory: record.autoPauseMemory,
    autoResume: record.autoResume,
    startedAt: (record.startedAt ?? record.createdAt).toISOString(),
    expiresAt: record.expiresAt.toISOString(),
    endedAt: record.endedAt?.toISOString(),
  };
}
