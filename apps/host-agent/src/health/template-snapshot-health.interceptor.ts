import { Injectable, type CallHandler, type ExecutionContext, type NestInterceptor } from '@nestjs/common';
import { HealthController, type HealthReport } from '@kiln/telemetry';
import { map, type Observable } from 'rxjs';
import type { TemplateSnapshotStatus } from '../snapshot';
import { SandboxManager } from '../sandbox/sandbox-manager.service';

/** The `templates` component of the agent's /health. */
export interface TemplateSnapshotsComponent {
  /** `ready` when every tracked template build's snapshot is; else `not-ready` (and the builds say why). */
  status: 'ready' | 'not-ready';
  builds: TemplateSnapshotStatus[];
}

export type HostAgentHealthReport = HealthReport & { components: { templates: TemplateSnapshotsComponent } };

/**
 * Adds the template snapshots' state to GET /health as the `templates` component. It is reported next to the
 * dependencies, not as one: libs/telemetry answers 503 when any dependency is down, and an agent whose template
 * snapshot is being built or retried is still up (it runs and tears down sandboxes, and says why a create would
 * fail); readiness probes and the stack's start-up wait on /health must not fail for that.
 */
@Injectable()
export class TemplateSnapshotHealthInterceptor implements NestInterceptor {
  constructor(private readonly sandboxes: SandboxManager) {}

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http' || context.getClass() !== HealthController) return next.handle();
    return next.handle().pipe(map((report: HealthReport): HostAgentHealthReport => ({ ...report, components: { templates: this.templatesComponent() } })));
  }

  templatesComponent(): TemplateSnapshotsComponent {
    const builds = this.sandboxes.templateSnapshots();
    return { status: builds.every((b) => b.state === 'ready') ? 'ready' : 'not-ready', builds };
  }
}
