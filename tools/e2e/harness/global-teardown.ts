import { readStack, stopStack } from './stack-harness';

export default async function globalTeardown(): Promise<void> {
  await stopStack(readStack());
}
