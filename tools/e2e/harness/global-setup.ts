import { startStack, stopStack, readStack } from './stack-harness';
import { existsSync } from 'node:fs';
import { STACK_FILE } from './stack-harness';

export default async function globalSetup(): Promise<void> {
  // A previous run that was killed leaves its stack behind; remove it first.
  if (existsSync(STACK_FILE)) await stopStack(readStack()).catch(() => undefined);
  await startStack();
}
