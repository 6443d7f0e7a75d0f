import { timingSafeEqual } from 'node:crypto';
import { Injectable, Logger } from '@nestjs/common';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { SchedulerEnv } from '@kiln/config';
import { HostRepository } from '@kiln/db';
import { HostHeartbeat, HostRegistration, HostRegistrationReply } from '@kiln/messaging';

function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

/** Which hosts exist and are alive: registration (token-checked) and heartbeats. */
@Injectable()
export class HostRegistryService {
  private readonly logger = new Logger(HostRegistryService.name);

  constructor(
    private readonly env: SchedulerEnv,
    private readonly hosts: HostRepository,
  ) {}

  /**
   * `subjectHostId` is the host id of the subject the registration came on, which only that host's NATS user may
   * publish on: a registration for any other host is refused. A registration with the token is checked against it; one
   * without (a re-registration) is accepted only for a host already registered, whose subject vouches for it.
   */
  async register(registration: HostRegistration, subjectHostId: string | undefined): Promise<HostRegistrationReply> {
    if (registration?.hostId === undefined || registration.hostId !== subjectHostId) {
      this.logger.warn(`registration for host ${String(registration?.hostId)} sent on the subject of host ${String(subjectHostId)} refused`);
      throw new KilnError(ErrorCode.PermissionDenied, 'a host registers only itself, on its own subject');
    }
    if (registration.token !== undefined) {
      if (typeof registration.token !== 'string' || !sameSecret(registration.token, this.env.HOST_REGISTRATION_TOKEN)) {
        throw new KilnError(ErrorCode.Unauthenticated, 'host registration token rejected');
      }
    } else if (!(await this.hosts.get(registration.hostId))) {
      throw new KilnError(ErrorCode.Unauthenticated, `host ${registration.hostId} is not registered: its first registration needs the token`);
    }
    if (!/^[a-zA-Z0-9._-]{1,63}$/.test(registration.hostId ?? '') || !registration.grpcAddress || !registration.proxyUrl) {
      throw new KilnError(ErrorCode.InvalidArgument, 'registration needs hostId, grpcAddress and proxyUrl');
    }
    await this.hosts.register({
      hostId: registration.hostId,
      address: registration.grpcAddress,
      proxyUrl: registration.proxyUrl,
      acceleration: registration.acceleration,
      version: registration.version,
      vcpus: registration.capacity.vcpus,
      memoryMib: registration.capacity.memoryMib,
      sandboxes: registration.capacity.sandboxes,
      templates: registration.templates,
      // Agents from before clone pools send none.
      readyCloneTemplates: registration.readyCloneTemplates ?? [],
    });
    this.logger.log(`host ${registration.hostId} registered at ${registration.grpcAddress} (${registration.acceleration})`);
    return { accepted: true, heartbeatIntervalSeconds: Math.max(1, Math.floor(this.env.HOST_HEARTBEAT_TTL_SECONDS / 3)) };
  }

  /** `subjectHostId`: the host id of the heartbeat's subject (vouched for by NATS); the payload must name the same. */
  async heartbeat(heartbeat: HostHeartbeat, subjectHostId: string | undefined): Promise<void> {
    if (heartbeat.hostId !== subjectHostId) {
      this.logger.warn(`heartbeat for host ${heartbeat.hostId} sent on the subject of host ${String(subjectHostId)} ignored`);
      return;
    }
    const known = await this.hosts.heartbeat(heartbeat.hostId, {
      vcpus: heartbeat.usage.vcpus,
      memoryMib: heartbeat.usage.memoryMib,
      sandboxes: heartbeat.usage.sandboxes,
      templates: heartbeat.templates,
      readyCloneTemplates: heartbeat.readyCloneTemplates ?? [],
    });
    if (!known) this.logger.warn(`heartbeat from unregistered host ${heartbeat.hostId} ignored`);
  }
}
