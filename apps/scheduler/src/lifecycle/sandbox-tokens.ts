import { createHmac } from 'node:crypto';
import { Injectable } from '@nestjs/common';
import { SchedulerEnv } from '@kiln/config';

type TokenPurpose = 'envd' | 'traffic';

/**
 * A sandbox's access tokens, derived with HMAC-SHA256 from the deployment key and the sandbox id: every sandbox has
 * them from birth (E2B secures every sandbox's envd), nothing stores them, and the same sandbox gets the same token
 * after a scheduler restart or a resume. Distinct purposes give independent tokens.
 */
@Injectable()
export class SandboxTokens {
  private readonly key: Buffer;

  constructor(env: SchedulerEnv) {
    this.key = Buffer.from(env.KILN_SANDBOX_TOKEN_KEY, 'utf8');
  }

  envdAccessToken(sandboxId: string): string {
    return this.derive('envd', sandboxId);
  }

  trafficAccessToken(sandboxId: string): string {
    return this.derive('traffic', sandboxId);
  }

  private derive(purpose: TokenPurpose, sandboxId: string): string {
    return createHmac('sha256', this.key).update(`kiln-sandbox-token/v1/${purpose}/${sandboxId}`).digest('base64url');
  }
}
