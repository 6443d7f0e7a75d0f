import { Template, type TemplateBuilder, type TemplateClass } from 'e2b';
import type { DockerfilePlan } from '../dockerfile/dockerfile-parser';

/**
 * The SDK Template a parsed Dockerfile stands for: the same calls a user would write (fromTemplate/fromImage, runCmd,
 * copy, setEnvs, setWorkdir, setUser, setStartCmd/setReadyCmd), so the build goes through the SDK's own upload and
 * serialisation. One plan step becomes exactly one SDK instruction, which keeps E2B step numbers aligned with it.
 */
export function templateFromDockerfile(plan: DockerfilePlan, contextDir: string, readyCmd?: string): TemplateClass {
  const start = Template({ fileContextPath: contextDir });
  let builder: TemplateBuilder = plan.base.kind === 'template' ? start.fromTemplate(plan.base.name) : start.fromImage(plan.base.name);
  for (const step of plan.steps) {
    switch (step.type) {
      case 'RUN':
        builder = builder.runCmd(step.command);
        break;
      case 'COPY':
        builder = builder.copy(step.src, step.dest, { user: step.user, mode: step.mode });
        break;
      case 'ENV':
        builder = builder.setEnvs(Object.fromEntries(step.envs));
        break;
      case 'WORKDIR':
        builder = builder.setWorkdir(step.path);
        break;
      case 'USER':
        builder = builder.setUser(step.user);
        break;
    }
  }
  if (plan.startCmd !== undefined) {
    // setStartCmd's ready command is optional on the wire (TemplateBuildStartV2.readyCmd): none unless --ready-cmd.
    return builder.setStartCmd(plan.startCmd, readyCmd as string);
  }
  if (readyCmd !== undefined) return builder.setReadyCmd(readyCmd);
  return builder;
}
