import { spawnSync } from 'node:child_process';
import { launchPlan } from './user-launch';

describe('launchPlan', () => {
  it('execs the command directly with uid/gid when there is nothing else to set', () => {
    expect(launchPlan('/bin/echo', ['hi'], { uid: 1000, gid: 1000, groups: [1000], resetOomScore: false })).toEqual({
      file: '/bin/echo',
      args: ['hi'],
      uid: 1000,
      gid: 1000,
    });
  });

  it('resets the OOM score through an exec prefix that keeps argv intact (real process)', () => {
    const plan = launchPlan('/bin/sh', ['-c', 'cat /proc/$$/oom_score_adj; printf "%s|" "$@"', 'x', 'a b', "it's"], {
      uid: 0,
      gid: 0,
      groups: [0],
      resetOomScore: true,
    });
    const run = spawnSync(plan.file, plan.args, { encoding: 'utf8' });
    expect(run.status).toBe(0);
    expect(run.stdout).toBe("100\na b|it's|");
  });
});
