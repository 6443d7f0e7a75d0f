/**
 * Mutable settings that POST /init delivers: they apply to every later request. Kept in one object so that
 * services read the current values rather than copies taken at startup (a restored snapshot is re-initialised).
 */
export class AgentState {
  /** Env vars from /init, added to every process the agent starts (request envs still win). */
  readonly envVars = new Map<string, string>();
  defaultUser = 'user';
  defaultWorkdir: string | undefined;
  private accessToken: string | undefined;

  get accessTokenValue(): string | undefined {
    return this.accessToken;
  }

  setAccessToken(token: string | undefined): void {
    this.accessToken = token === '' ? undefined : token;
  }
}
