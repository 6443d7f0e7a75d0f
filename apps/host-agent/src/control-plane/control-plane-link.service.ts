import { Injectable, Logger, OnApplicationBootstrap, OnApplicationShutdown } from '@nestjs/common';
import { HostAgentEnv, describeError } from '@kiln/config';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { HostRegistration, HostRegistrationReply, MessagingClient, hostHeartbeatSubject, hostRegisterSubject } from '@kiln/messaging';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { RegistrationNotAcceptedError, RegistrationRefusedError } from './control-plane.errors';
import { HostCredentialStore } from './host-credential-store';
import { HostInfoService } from './host-info.service';

/**
 * Re-registering is idempotent (the credential proves who we are, the monitor upserts the host); doing it
 * periodically heals a monitor that lost its host table and refreshes what the registration alone carries.
 */
const REREGISTER_EVERY_MS = 60_000;
const REGISTER_RETRY_MS = 2_000;
const REGISTER_TIMEOUT_MS = 5_000;
/** Until a registration reply names the monitor's interval (the monitor's own default). */
const DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 2;
/** The same registration failure is logged again after this long, so a stuck agent keeps saying why. */
const REPEAT_FAILURE_LOG_MS = 30_000;

type RegistrationAuth = Pick<HostRegistration, 'token' | 'credential'>;

function isUnauthenticated(error: unknown): error is KilnError {
  return error instanceof KilnError && error.code === ErrorCode.Unauthenticated;
}

/**
 * The host agent's side of the fleet: registers with the host monitor and heartbeats capacity and usage over NATS.
 *
 * Identity: the first registration presents the one-time join token (KILN_JOIN_TOKEN) and gets back the host
 * credential, stored in `<KILN_DATA_DIR>/host-credential`; every later one presents the credential. Should the
 * monitor refuse the credential (it forgot the host, or the host was removed), the agent falls back to a configured
 * join token. Without either, it logs what the operator must do and keeps retrying: it never exits over it.
 *
 * Timing: heartbeats go at the interval the monitor's reply names, so liveness timing is set in the monitor alone.
 */
@Injectable()
export class ControlPlaneLink implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(ControlPlaneLink.name);
  private readonly credentials: HostCredentialStore;
  private heartbeatTimer?: NodeJS.Timeout;
  private registerTimer?: NodeJS.Timeout;
  private registered = false;
  private stopped = false;
  /** The host credential in force: read from disk at the first registration, or just issued by the monitor. */
  private credential?: string;
  /** The monitor issued a credential that is not on disk yet (the write failed): tried again at each registration. */
  private credentialUnsaved = false;
  private armedIntervalSeconds?: number;
  private heartbeatInFlight = false;
  private lastFailure?: { message: string; loggedAt: number };

  constructor(
    private readonly env: HostAgentEnv,
    private readonly messaging: MessagingClient,
    private readonly sandboxes: SandboxManager,
    private readonly hostInfo: HostInfoService,
  ) {
    this.credentials = new HostCredentialStore(env.KILN_DATA_DIR);
  }

  onApplicationBootstrap(): void {
    void this.registerLoop();
  }

  onApplicationShutdown(): void {
    this.stopped = true;
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.registerTimer);
  }

  get isRegistered(): boolean {
    return this.registered;
  }

  /** The interval heartbeats go at (the last registration reply's); undefined before the first registration. */
  get heartbeatIntervalSeconds(): number | undefined {
    return this.armedIntervalSeconds;
  }

  private async registerLoop(): Promise<void> {
    if (this.stopped) return;
    let nextInMs = REREGISTER_EVERY_MS;
    try {
      await this.register();
      if (!this.registered) this.logger.log(`registered with the host monitor as ${this.sandboxes.hostId}`);
      this.registered = true;
      this.lastFailure = undefined;
      await this.heartbeat();
    } catch (error) {
      nextInMs = REGISTER_RETRY_MS;
      this.logFailure(error);
    }
    if (this.stopped) return;
    this.registerTimer = setTimeout(() => void this.registerLoop(), nextInMs);
    this.registerTimer.unref();
  }

  /** One registration: with the credential if there is one (the join token if the monitor refuses it), else the token. */
  async register(): Promise<HostRegistrationReply> {
    this.credential ??= await this.credentials.read();
    let reply: HostRegistrationReply;
    if (this.credential) {
      try {
        reply = await this.send({ credential: this.credential });
      } catch (error) {
        if (!isUnauthenticated(error)) throw error;
        if (!this.env.KILN_JOIN_TOKEN) {
          throw new RegistrationRefusedError(
            `the host monitor refused the credential in ${this.credentials.path} (${error.message}) and KILN_JOIN_TOKEN is not set: ` +
              `mint a join token for host ${this.sandboxes.hostId} (POST /nodes/join-tokens) and start the agent with KILN_JOIN_TOKEN`,
          );
        }
        this.logger.warn(`the host monitor refused the credential in ${this.credentials.path} (${error.message}); registering with KILN_JOIN_TOKEN`);
        reply = await this.send({ token: this.env.KILN_JOIN_TOKEN });
      }
    } else {
      if (!this.env.KILN_JOIN_TOKEN) {
        throw new RegistrationRefusedError(
          `this host has no credential (${this.credentials.path}) and KILN_JOIN_TOKEN is not set: ` +
            `mint a join token for host ${this.sandboxes.hostId} (POST /nodes/join-tokens) and start the agent with KILN_JOIN_TOKEN`,
        );
      }
      reply = await this.send({ token: this.env.KILN_JOIN_TOKEN });
    }
    if (!reply.accepted) throw new RegistrationNotAcceptedError(`the host monitor did not accept host ${this.sandboxes.hostId}`);
    if (reply.hostCredential && reply.hostCredential !== this.credential) {
      // The join token is spent now: the credential is the host's identity, kept in memory even if the write fails.
      this.credential = reply.hostCredential;
      this.credentialUnsaved = true;
      this.logger.log(`the host monitor issued this host's credential; keeping it in ${this.credentials.path}`);
    }
    if (this.credentialUnsaved && this.credential) await this.saveCredential(this.credential);
    this.armHeartbeat(reply.heartbeatIntervalSeconds);
    return reply;
  }

  async heartbeat(): Promise<void> {
    if (!this.registered || this.heartbeatInFlight) return;
    this.heartbeatInFlight = true;
    try {
      const report = await this.hostInfo.report();
      await this.messaging.emit(hostHeartbeatSubject(this.sandboxes.hostId), { hostId: this.sandboxes.hostId, at: new Date().toISOString(), ...report });
    } catch (error) {
      this.logger.warn(`heartbeat failed: ${describeError(error)}`);
    } finally {
      this.heartbeatInFlight = false;
    }
  }

  private async send(auth: RegistrationAuth): Promise<HostRegistrationReply> {
    const report = await this.hostInfo.report();
    return this.messaging.request(
      hostRegisterSubject(this.sandboxes.hostId),
      {
        hostId: this.sandboxes.hostId,
        ...auth,
        grpcAddress: this.hostInfo.grpcAddress,
        proxyUrl: this.hostInfo.proxyUrl,
        acceleration: report.acceleration,
        version: report.agentVersion,
        capacity: report.capacity,
        templates: report.templates,
        readyCloneTemplates: report.readyCloneTemplates,
        machine: this.hostInfo.machine(),
      },
      REGISTER_TIMEOUT_MS,
    );
  }

  /** A failed write is not a failed registration (the host is registered): it is logged and tried again next time. */
  private async saveCredential(credential: string): Promise<void> {
    try {
      await this.credentials.save(credential);
      this.credentialUnsaved = false;
    } catch (error) {
      this.logger.error(
        `cannot store the host credential in ${this.credentials.path} (${describeError(error)}); ` +
          'retrying at the next registration: if the agent restarts first, it needs a new join token',
      );
    }
  }

  /** (Re)arms the heartbeat timer at the monitor's interval; a reply without a usable one keeps the default. */
  private armHeartbeat(intervalSeconds: number | undefined): void {
    const seconds = typeof intervalSeconds === 'number' && Number.isFinite(intervalSeconds) && intervalSeconds > 0 ? intervalSeconds : DEFAULT_HEARTBEAT_INTERVAL_SECONDS;
    if (this.heartbeatTimer && seconds === this.armedIntervalSeconds) return;
    if (this.armedIntervalSeconds !== undefined) this.logger.log(`heartbeat interval changed from ${this.armedIntervalSeconds} s to ${seconds} s`);
    clearInterval(this.heartbeatTimer);
    this.armedIntervalSeconds = seconds;
    this.heartbeatTimer = setInterval(() => void this.heartbeat(), seconds * 1000);
    this.heartbeatTimer.unref();
  }

  /** Refusals need the operator (error); others (NATS or the monitor away) heal on their own (warning). */
  private logFailure(error: unknown): void {
    const message = describeError(error);
    const now = Date.now();
    if (this.lastFailure?.message === message && now - this.lastFailure.loggedAt < REPEAT_FAILURE_LOG_MS) return;
    this.lastFailure = { message, loggedAt: now };
    const line = `registration failed (${message}); retrying every ${REGISTER_RETRY_MS} ms`;
    if (error instanceof RegistrationRefusedError || isUnauthenticated(error)) this.logger.error(line);
    else this.logger.warn(line);
  }
}
