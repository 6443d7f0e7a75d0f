import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { HostAgentEnv, describeError } from '@kiln/config';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { MessagingClient, hostHeartbeatSubject, hostRegisterSubject } from '@kiln/messaging';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { AccelerationProbe } from '../vmm';
import { CachedTemplate, HOST_AGENT_VERSION, HostInfoService } from './host-info.service';

/**
 * Re-registering is an idempotent upsert; doing it periodically heals a scheduler that lost its host table. Only the
 * first registration carries the registration token: later ones are vouched for by this host's NATS user (only it
 * may publish on its registration subject), and the token is sent again only if the scheduler no longer knows us.
 */
const REREGISTER_EVERY_MS = 60_000;
const REGISTER_RETRY_MS = 2_000;

function withReadyClones(templates: CachedTemplate[]): string[] {
  return templates.filter((t) => t.readyClones > 0).map((t) => t.templateId);
}

/**
 * The host agent's side of host registration: register with the scheduler (token
 * from config) and heartbeat usage over NATS so placement only targets live hosts.
 */
@Injectable()
export class ControlPlaneLink implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(ControlPlaneLink.name);
  private heartbeatTimer?: NodeJS.Timeout;
  private registerTimer?: NodeJS.Timeout;
  private registered = false;
  /** The scheduler accepted our token once: re-registrations go without it unless it asks again. */
  private tokenAccepted = false;
  private stopped = false;

  constructor(
    private readonly env: HostAgentEnv,
    private readonly messaging: MessagingClient,
    private readonly sandboxes: SandboxManager,
    private readonly hostInfo: HostInfoService,
    private readonly acceleration: AccelerationProbe,
  ) {}

  onApplicationBootstrap(): void {
    void this.registerLoop();
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), this.env.HEARTBEAT_INTERVAL_SECONDS * 1000);
    this.heartbeatTimer.unref();
  }

  onApplicationShutdown(): void {
    this.stopped = true;
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.registerTimer);
  }

  get isRegistered(): boolean {
    return this.registered;
  }

  private async registerLoop(): Promise<void> {
    if (this.stopped) return;
    try {
      await this.register();
      if (!this.registered) this.logger.log(`registered with the scheduler as ${this.sandboxes.hostId}`);
      this.registered = true;
      await this.heartbeat();
      this.registerTimer = setTimeout(() => void this.registerLoop(), REREGISTER_EVERY_MS);
    } catch (error) {
      this.logger.warn(`registration failed (${describeError(error)}); retrying in ${REGISTER_RETRY_MS} ms`);
      this.registerTimer = setTimeout(() => void this.registerLoop(), REGISTER_RETRY_MS);
    }
    this.registerTimer.unref();
  }

  async register(): Promise<void> {
    if (!this.tokenAccepted) {
      await this.sendRegistration(true);
      this.tokenAccepted = true;
      return;
    }
    try {
      await this.sendRegistration(false);
    } catch (error) {
      if (!(error instanceof KilnError && error.code === ErrorCode.Unauthenticated)) throw error;
      // The scheduler lost this host's row (a fresh database): only the token can register it again.
      await this.sendRegistration(true);
    }
  }

  private async sendRegistration(withToken: boolean): Promise<void> {
    const [accelerator, templates] = await Promise.all([this.acceleration.accelerator(), this.hostInfo.cachedTemplates()]);
    await this.messaging.request(
      hostRegisterSubject(this.sandboxes.hostId),
      {
        hostId: this.sandboxes.hostId,
        ...(withToken ? { token: this.env.HOST_REGISTRATION_TOKEN } : {}),
        grpcAddress: this.hostInfo.grpcAddress,
        proxyUrl: this.hostInfo.proxyUrl,
        acceleration: accelerator,
        version: HOST_AGENT_VERSION,
        capacity: this.sandboxes.capacity,
        templates: templates.map((t) => t.templateId),
        readyCloneTemplates: withReadyClones(templates),
      },
      5_000,
    );
  }

  async heartbeat(): Promise<void> {
    if (!this.registered) return;
    try {
      const templates = await this.hostInfo.cachedTemplates();
      await this.messaging.emit(hostHeartbeatSubject(this.sandboxes.hostId), {
        hostId: this.sandboxes.hostId,
        at: new Date().toISOString(),
        capacity: this.sandboxes.capacity,
        usage: this.sandboxes.usage(),
        templates: templates.map((t) => t.templateId),
        readyCloneTemplates: withReadyClones(templates),
        sandboxIds: this.sandboxes.list().map((s) => s.record.sandboxId),
      });
    } catch (error) {
      this.logger.warn(`heartbeat failed: ${describeError(error)}`);
    }
  }
}
