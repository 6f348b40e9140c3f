// {{name}}: a ccx hook. See README.md for building and trying it, and ccx's docs/hooks.md for
// the contract. WIT types map to JS as: records → objects with camelCase fields, option →
// value or undefined, u64 → BigInt, enum → string, variant → { tag, val }.

import { config, log } from 'ccx:hooks/host@0.2.0';

/** A value from this hook's `config` table in ccx.toml. */
function cfg(key) {
  for (const [k, v] of config()) {
    if (k === key) return v;
  }
  return undefined;
}
@@pre

/** Runs before a command: allow it, deny it with a reason, or modify it. */
export function preExecute(request) {
  // Example: deny commands containing any of the comma-separated `deny` words.
  for (const word of (cfg('deny') ?? '').split(',').map((w) => w.trim()).filter(Boolean)) {
    if (request.command.includes(word)) {
      return { tag: 'deny', val: `\`${word}\` is not allowed here` };
    }
  }
  log('debug', `allowing \`${request.command}\``);
  // Example: tell the command it runs under this hook.
  return {
    tag: 'modify',
    val: { setEnv: [['CCX_HOOK', '{{name}}']], unsetEnv: [] },
  };
}
@@end
@@post

/** Runs after a command: annotate the job and, if you like, judge it. */
export function postExecute(job) {
  const annotations = [
    ['stdout_tail_lines', String(job.stdoutTail.split('\n').filter(Boolean).length)],
    ['stdout_bytes', String(job.stdoutBytes)],
  ];
  // Example: fail jobs that did not exit 0 when `fail_on_error = true`.
  let verdict;
  if (cfg('fail_on_error') === 'true') {
    if (job.status === 'completed' && job.exitCode === 0) verdict = { tag: 'pass' };
    else if (job.exitCode !== undefined) verdict = { tag: 'fail', val: `exit code ${job.exitCode}` };
    else verdict = { tag: 'fail', val: 'the command did not exit' };
  }
  return { annotations, verdict };
}
@@end
