import { Injectable, Logger } from '@nestjs/common';
import { HostMonitorEnv } from '@kiln/config';
import { HostState } from '@kiln/contracts';
import { HostRepository } from '@kiln/db';
import { HostAdminState, HostRegistration, HostRegistrationReply } from '@kiln/messaging';
import { FleetService } from '../fleet/fleet.service';
import { isHostId } from './host-id';
import { JoinTokens } from './join-tokens.service';
import { InvalidRegistrationError, RegistrationForOtherHostError, RegistrationRejectedError } from './registration.errors';

const ADMIN_STATES: ReadonlySet<string> = new Set<HostAdminState>(['ready', 'draining', 'cordoned']);

function isCount(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0;
}

function isStringList(value: unknown): boolean {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

/** Why a registration's fields cannot be taken, or undefined. */
function invalidField(registration: HostRegistration): string | undefined {
  if (!isHostId(registration.hostId)) return 'hostId must be 1-63 characters of [a-zA-Z0-9._-]';
  if (typeof registration.grpcAddress !== 'string' || !/^[^\s/]+:\d{1,5}$/.test(registration.grpcAddress)) return 'grpcAddress must be host:port';
  if (typeof registration.proxyUrl !== 'string' || !URL.canParse(registration.proxyUrl) || !/^https?:$/.test(new URL(registration.proxyUrl).protocol)) {
    return 'proxyUrl must be an http(s) URL';
  }
  if (registration.acceleration !== 'kvm' && registration.acceleration !== 'tcg') return "acceleration must be 'kvm' or 'tcg'";
  const capacity = registration.capacity;
  if (typeof capacity !== 'object' || capacity === null || ![capacity.vcpus, capacity.memoryMib, capacity.sandboxes].every(isCount)) {
    return 'capacity needs whole vcpus, memoryMib and sandboxes';
  }
  if (capacity.diskMib !== undefined && !isCount(capacity.diskMib)) return 'capacity.diskMib must be a whole number';
  if (!isStringList(registration.templates)) return 'templates must be a list of template ids';
  if (registration.readyCloneTemplates !== undefined && !isStringList(registration.readyCloneTemplates)) return 'readyCloneTemplates must be a list of template ids';
  if (typeof registration.version !== 'string') return 'version must be a string';
  return undefined;
}

/**
 * Admits hosts. `subjectHostId` is the host id of the subject the registration came on, which only that host's NATS
 * user may publish on: a registration about any other host is refused. Then the host must prove itself: its host
 * credential, or a one-time join token (exchanged for a new credential in the reply).
 */
@Injectable()
export class RegistrationService {
  private readonly logger = new Logger(RegistrationService.name);

  constructor(
    private readonly env: HostMonitorEnv,
    private readonly fleet: FleetService,
    private readonly joinTokens: JoinTokens,
    private readonly hosts: HostRepository,
  ) {}

  async register(registration: HostRegistration, subjectHostId: string | undefined): Promise<HostRegistrationReply> {
    if (typeof registration !== 'object' || registration === null || registration.hostId === undefined || registration.hostId !== subjectHostId) {
      this.logger.warn(`registration for host ${String(registration?.hostId)} sent on the subject of host ${String(subjectHostId)} refused`);
      throw new RegistrationForOtherHostError();
    }
    // Fields before credentials: a malformed registration must not spend its join token.
    const invalid = invalidField(registration);
    if (invalid) throw new InvalidRegistrationError(invalid);
    const hostId = registration.hostId;

    let credentialHash: string | undefined;
    let hostCredential: string | undefined;
    const credentialAccepted = typeof registration.credential === 'string' && (await this.joinTokens.isCredentialOf(registration.credential, hostId));
    if (!credentialAccepted) {
      if (typeof registration.token !== 'string') {
        throw new RegistrationRejectedError(
          registration.credential !== undefined
            ? `host credential of ${hostId} rejected: register with a new join token`
            : `host ${hostId} presented neither a host credential nor a join token`,
        );
      }
      ({ credential: hostCredential, credentialHash } = await this.joinTokens.redeem(registration.token, hostId));
    }

    // A host the monitor forgot (its KV entry and memory are gone) keeps the admin state of its row; a removed host
    // that joins again starts afresh.
    const row = await this.hosts.get(hostId);
    const adminStateIfNew = row && row.state !== HostState.Offline && ADMIN_STATES.has(row.adminState) ? (row.adminState as HostAdminState) : 'ready';
    await this.fleet.register(
      {
        hostId,
        grpcAddress: registration.grpcAddress,
        proxyUrl: registration.proxyUrl,
        acceleration: registration.acceleration,
        version: registration.version,
        capacity: registration.capacity,
        templates: registration.templates,
        readyCloneTemplates: registration.readyCloneTemplates ?? [],
        ...(registration.machine ? { machine: registration.machine } : {}),
      },
      { adminStateIfNew, ...(credentialHash ? { credentialHash } : {}) },
    );
    return {
      accepted: true,
      heartbeatIntervalSeconds: this.env.HOST_HEARTBEAT_INTERVAL_SECONDS,
      ...(hostCredential ? { hostCredential } : {}),
    };
  }
}
