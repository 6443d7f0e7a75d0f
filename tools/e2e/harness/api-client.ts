import { StackInfo } from './stack-harness';

export interface CreatedSandbox {
  sandboxID: string;
  envdAccessToken?: string;
}

/** Minimal REST calls against the gateway, for suites that exercise the host rather than the SDK. */
export async function createSandbox(stack: StackInfo, body: Record<string, unknown> = {}): Promise<CreatedSandbox> {
  const response = await fetch(`${stack.apiUrl}/sandboxes`, {
    method: 'POST',
    headers: { 'X-API-Key': stack.apiKey, 'content-type': 'application/json' },
    body: JSON.stringify({ templateID: 'base', timeout: 300, secure: true, ...body }),
  });
  if (response.status !== 201) throw new Error(`create answered ${response.status}: ${await response.text()}`);
  return (await response.json()) as CreatedSandbox;
}

export async function killSandbox(stack: StackInfo, sandboxId: string): Promise<number> {
  const response = await fetch(`${stack.apiUrl}/sandboxes/${sandboxId}`, { method: 'DELETE', headers: { 'X-API-Key': stack.apiKey } });
  await response.arrayBuffer();
  return response.status;
}

export async function sandboxStatus(stack: StackInfo, sandboxId: string): Promise<number> {
  const response = await fetch(`${stack.apiUrl}/sandboxes/${sandboxId}`, { headers: { 'X-API-Key': stack.apiKey } });
  await response.arrayBuffer();
  return response.status;
}

