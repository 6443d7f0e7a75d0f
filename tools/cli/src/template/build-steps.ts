import { Template, type TemplateClass } from 'e2b';
import type { DockerfilePlan } from '../dockerfile/dockerfile-parser';

/** What each E2B build step number stands for: "0" the base, "1".."N" the steps, "N+1" the finalisation. */
export type StepLabels = string[];

interface SerializedTemplate {
  fromImage?: string;
  fromTemplate?: string;
  steps?: Array<{ type: string; args?: string[] }>;
  startCmd?: string;
  readyCmd?: string;
}

/** Labels for a template from a file: from the definition the SDK would send. */
export async function stepLabelsOfTemplate(template: TemplateClass): Promise<StepLabels> {
  const definition = JSON.parse(await Template.toJSON(template, false)) as SerializedTemplate;
  const base = definition.fromTemplate !== undefined ? `FROM ${definition.fromTemplate}` : `FROM ${definition.fromImage ?? '?'}`;
  const steps = (definition.steps ?? []).map((step) => describeStep(step.type, step.args ?? []));
  return [base, ...steps, finalizeLabel(definition.startCmd, definition.readyCmd)];
}

/** Labels for a Dockerfile: its own instructions and line numbers. */
export function stepLabelsOfDockerfile(plan: DockerfilePlan, file: string, readyCmd?: string): StepLabels {
  const at = (line: number) => ` (${file}:${line})`;
  return [
    `FROM ${plan.base.name}${at(plan.base.line)}`,
    ...plan.steps.map((step) => `${step.instruction}${at(step.line)}`),
    finalizeLabel(plan.startCmd, readyCmd) + (plan.startCmdLine ? at(plan.startCmdLine) : ''),
  ];
}

function describeStep(type: string, args: string[]): string {
  switch (type.toUpperCase()) {
    case 'RUN':
      return `RUN ${args[0] ?? ''}${args[1] ? ` (as ${args[1]})` : ''}`;
    case 'COPY':
      return `COPY ${args[0] ?? ''} ${args[1] ?? ''}${args[2] ? ` (owner ${args[2]})` : ''}`;
    case 'ENV': {
      const pairs: string[] = [];
      for (let i = 0; i + 1 < args.length; i += 2) pairs.push(`${args[i]}=${args[i + 1]}`);
      return `ENV ${pairs.join(' ')}`;
    }
    default:
      return `${type.toUpperCase()} ${args.join(' ')}`;
  }
}

function finalizeLabel(startCmd?: string, readyCmd?: string): string {
  const parts = [startCmd ? `start: ${startCmd}` : undefined, readyCmd ? `ready: ${readyCmd}` : undefined].filter(Boolean);
  return `finalize${parts.length ? ` (${parts.join('; ')})` : ''}: snapshot`;
}
