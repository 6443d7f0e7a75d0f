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

  async register(registration: HostRegistration): Promise<HostRegistrationReply> {
    if (typeof registration?.token !== 'string' || !sameSecret(registration.token, this.env.HOST_REGISTRATION_TOKEN)) {
      throw new KilnError(ErrorCode.Unauthenticated, 'host registration token rejected');
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

  async heartbeat(heartbeat: HostHeartbeat): Promise<void> {
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
