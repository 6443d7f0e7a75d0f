import { Injectable } from '@nestjs/common';

export type DependencyCheck = () => Promise<unknown>;

export interface DependencyStatus {
  status: 'up' | 'down';
  latencyMs: number;
  error?: string;
}

export interface HealthReport {
  status: 'ok' | 'degraded';
  service: string;
  uptimeSeconds: number;
  dependencies: Record<string, DependencyStatus>;
}

/** Every module that owns a connection registers a cheap liveness check for it here. */
@Injectable()
export class DependencyHealth {
  private readonly checks = new Map<string, DependencyCheck>();
  private service = 'kiln';

  setService(name: string): void {
    this.service = name;
  }

  register(name: string, check: DependencyCheck): void {
    this.checks.set(name, check);
  }

  async report(timeoutMs = 2_000): Promise<HealthReport> {
    const entries = await Promise.all(
      [...this.checks].map(async ([name, check]) => [name, await this.probe(check, timeoutMs)] as const),
    );
    const dependencies = Object.fromEntries(entries);
    const allUp = entries.every(([, s]) => s.status === 'up');
    return {
      status: allUp ? 'ok' : 'degraded',
      service: this.service,
      uptimeSeconds: Math.round(process.uptime()),
      dependencies,
    };
  }

  private async probe(check: DependencyCheck, timeoutMs: number): Promise<DependencyStatus> {
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        check(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
        }),
      ]);
      return { status: 'up', latencyMs: Math.round(performance.now() - started) };
    } catch (error) {
      return {
        status: 'down',
        latencyMs: Math.round(performance.now() - started),
        error: error instanceof Error ? error.message : String(error),
      };
    } finally {
      clearTimeout(timer);
    }
  }
}
