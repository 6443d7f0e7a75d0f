import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { SandboxView, toPublicSandboxState } from '@kiln/contracts';

/** E2B's `Sandbox`: what create, connect and resume answer. */
export class SandboxBody {
  @ApiProperty() sandboxID: string;
  @ApiProperty() templateID: string;
  @ApiPropertyOptional() alias?: string;
  @ApiProperty({ deprecated: true, description: 'Host the sandbox runs on' }) clientID: string;
  @ApiProperty() envdVersion: string;
  @ApiPropertyOptional() envdAccessToken?: string;
  @ApiPropertyOptional({ nullable: true, type: String }) trafficAccessToken: string | null;
  @ApiPropertyOptional({ nullable: true, type: String }) domain: string | null;
}

export class SandboxLifecycleBody {
  @ApiProperty() autoResume: boolean;
  @ApiProperty({ enum: ['kill', 'pause'] }) onTimeout: 'kill' | 'pause';
}

/** E2B's `Error` as a fork result carries it. */
export class ForkErrorBody {
  @ApiProperty() code: number;
  @ApiProperty() message: string;
}

/** E2B's `SandboxForkResult`: exactly one of sandbox or error. */
export class ForkResultBody {
  @ApiPropertyOptional({ type: SandboxBody }) sandbox?: SandboxBody;
  @ApiPropertyOptional({ type: ForkErrorBody }) error?: ForkErrorBody;
}

/** E2B's `SnapshotInfo`. */
export class SnapshotInfoBody {
  @ApiProperty({ description: 'name:tag when named, else templateID:tag; what Sandbox.create() takes' }) snapshotID: string;
  @ApiProperty({ type: [String] }) names: string[];
}

/** E2B's `ListedSandbox`. */
export class ListedSandboxBody {
  @ApiProperty() sandboxID: string;
  @ApiProperty() templateID: string;
  @ApiPropertyOptional() alias?: string;
  @ApiProperty({ deprecated: true }) clientID: string;
  @ApiProperty({ format: 'date-time' }) startedAt: string;
  @ApiProperty({ format: 'date-time' }) endAt: string;
  @ApiProperty() cpuCount: number;
  @ApiProperty() memoryMB: number;
  @ApiProperty() diskSizeMB: number;
  @ApiProperty({ type: 'object', additionalProperties: { type: 'string' } }) metadata: Record<string, string>;
  @ApiProperty({ enum: ['running', 'paused'] }) state: 'running' | 'paused';
  @ApiProperty() envdVersion: string;
  @ApiProperty({ type: [Object] }) volumeMounts: Array<{ name: string; path: string }>;
  @ApiProperty({ type: SandboxLifecycleBody }) lifecycle: SandboxLifecycleBody;
}

/** E2B's `SandboxNetworkConfig` as a sandbox's detail shows it: the rules in force. */
export class SandboxNetworkBody {
  @ApiProperty() allowPublicTraffic: boolean;
  @ApiProperty({ type: [String] }) allowOut: string[];
  @ApiProperty({ type: [String] }) denyOut: string[];
  @ApiPropertyOptional() maskRequestHost?: string;
}

/** E2B's `SandboxDetail`. */
export class SandboxDetailBody extends ListedSandboxBody {
  @ApiPropertyOptional() envdAccessToken?: string;
  @ApiPropertyOptional({ nullable: true, type: Boolean }) allowInternetAccess: boolean | null;
  @ApiProperty({ type: SandboxNetworkBody }) network: SandboxNetworkBody;
  @ApiPropertyOptional({ nullable: true, type: String }) domain: string | null;
}

/** E2B's `SandboxMetric`. */
export class SandboxMetricBody {
  @ApiProperty({ format: 'date-time', deprecated: true }) timestamp: string;
  @ApiProperty() timestampUnix: number;
  @ApiProperty() cpuCount: number;
  @ApiProperty() cpuUsedPct: number;
  @ApiProperty() memUsed: number;
  @ApiProperty() memTotal: number;
  @ApiProperty() memCache: number;
  @ApiProperty() diskUsed: number;
  @ApiProperty() diskTotal: number;
}

export class SandboxLogEntryBody {
  @ApiProperty({ format: 'date-time' }) timestamp: string;
  @ApiProperty() message: string;
  @ApiProperty({ enum: ['debug', 'info', 'warn', 'error'] }) level: 'debug' | 'info' | 'warn' | 'error';
  @ApiProperty({ type: 'object', additionalProperties: { type: 'string' } }) fields: Record<string, string>;
}

/** E2B's `SandboxLogsV2Response`. */
export class SandboxLogsV2Body {
  @ApiProperty({ type: [SandboxLogEntryBody] }) logs: SandboxLogEntryBody[];
}

export class SandboxLogLineBody {
  @ApiProperty({ format: 'date-time' }) timestamp: string;
  @ApiProperty() line: string;
}

/** E2B's (deprecated) `SandboxLogs`. */
export class SandboxLogsBody {
  @ApiProperty({ type: [SandboxLogLineBody] }) logs: SandboxLogLineBody[];
  @ApiProperty({ type: [SandboxLogEntryBody] }) logEntries: SandboxLogEntryBody[];
}

/** Stand-in for E2B's deprecated clientID when the sandbox is not placed yet. */
const UNPLACED_CLIENT_ID = 'unplaced';

export function toSandboxBody(view: SandboxView, domain: string): SandboxBody {
  return {
    sandboxID: view.sandboxId,
    templateID: view.templateId,
    ...(view.alias ? { alias: view.alias } : {}),
    clientID: view.hostId ?? UNPLACED_CLIENT_ID,
    envdVersion: view.envdVersion,
    envdAccessToken: view.envdAccessToken,
    trafficAccessToken: view.trafficAccessToken ?? null,
    domain,
  };
}

export function toListedSandboxBody(view: SandboxView): ListedSandboxBody {
  return {
    sandboxID: view.sandboxId,
    templateID: view.templateId,
    ...(view.alias ? { alias: view.alias } : {}),
    clientID: view.hostId ?? UNPLACED_CLIENT_ID,
    startedAt: view.startedAt,
    endAt: view.expiresAt,
    cpuCount: view.vcpus,
    memoryMB: view.memoryMib,
    diskSizeMB: view.diskMib,
    metadata: view.metadata ?? {},
    // Callers only list or get live sandboxes; anything else is filtered before mapping.
    state: toPublicSandboxState(view.state) ?? 'running',
    envdVersion: view.envdVersion,
    volumeMounts: [],
    lifecycle: lifecycleBodyOf(view),
  };
}

export function toSandboxDetailBody(view: SandboxView, domain: string): SandboxDetailBody {
  return {
    ...toListedSandboxBody(view),
    envdAccessToken: view.envdAccessToken,
    allowInternetAccess: view.network.allowInternetAccess,
    network: {
      allowPublicTraffic: view.network.allowPublicTraffic,
      allowOut: view.network.egress.allowOut,
      denyOut: view.network.egress.denyOut,
      ...(view.network.maskRequestHost ? { maskRequestHost: view.network.maskRequestHost } : {}),
    },
    domain,
  };
}

/** E2B's SandboxLifecycle as the sandbox has it. */
export function lifecycleBodyOf(view: SandboxView): SandboxLifecycleBody {
  return { onTimeout: view.autoPause ? 'pause' : 'kill', autoResume: view.autoResume ?? false };
}
