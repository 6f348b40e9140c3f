// secret-scan: a ccx post-hook that fails a job whose output looks like it leaks a secret.
//
// It scans the stdout and stderr tails for cloud keys (AWS, Google, Azure), private key
// headers, bearer tokens, GitHub/GitLab/Slack/Stripe/OpenAI/Anthropic tokens, JWTs and
// credentials in URLs, and annotates what kinds it found and where: `secret_kinds`
// (comma-separated kinds), `secret_count`, `secret_streams`. It never copies any part of a
// secret into an annotation, a verdict or a log line.
//
// Config: `ignore` (kinds to skip, separated by spaces or commas); `verdict = "none"` to
// annotate without failing the job.

import { config } from 'ccx:hooks/host@0.2.0';

// [kind, pattern, needles]. Patterns are anchored on fixed prefixes to keep false positives
// rare. A rule's regex runs only when one of its needles (plain substrings every match
// contains; lowercase for the case-insensitive rule) is in the text: `includes` is the
// engine's own compiled search, while a regex runs in the interpreter (no JIT in WebAssembly)
// and is compiled on its first use in every fresh instance.
const RULES = [
  ['aws-access-key-id', /\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b/g, ['AKIA', 'ASIA', 'ABIA', 'ACCA']],
  ['aws-secret-access-key', /aws_?secret_?access_?key["']?\s*[:=]\s*["']?[A-Za-z0-9/+]{40}\b/gi, ['secret']],
  ['gcp-api-key', /\bAIza[0-9A-Za-z_-]{35}\b/g, ['AIza']],
  ['gcp-service-account-key', /"private_key_id"\s*:\s*"[0-9a-f]{40}"/g, ['"private_key_id"']],
  ['azure-storage-key', /AccountKey=[A-Za-z0-9+/]{86}==/g, ['AccountKey=']],
  ['private-key', /-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----/g, ['-----BEGIN ']],
  ['bearer-token', /\b[Bb]earer\s+[A-Za-z0-9._~+/-]{20,}=*/g, ['earer']],
  ['github-token', /\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,})\b/g, ['ghp_', 'gho_', 'ghu_', 'ghs_', 'ghr_', 'github_pat_']],
  ['gitlab-token', /\bglpat-[A-Za-z0-9_-]{20,}\b/g, ['glpat-']],
  ['slack-token', /\bxox[abposr]-[A-Za-z0-9-]{10,}\b/g, ['xox']],
  ['stripe-key', /\b[rs]k_live_[A-Za-z0-9]{24,}\b/g, ['k_live_']],
  ['anthropic-key', /\bsk-ant-[A-Za-z0-9_-]{32,}/g, ['sk-ant-']],
  ['openai-key', /\bsk-(?:proj-)?[A-Za-z0-9_-]{40,}/g, ['sk-']],
  ['jwt', /\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}/g, ['eyJ']],
  ['url-credentials', /\b[a-z][a-z0-9+.-]*:\/\/[^\s:/@]+:[^\s/@]{3,}@[^\s/]+/g, ['://']],
];

function cfg(key) {
  const entries = config();
  for (let i = 0; i < entries.length; i++) {
    if (entries[i][0] === key) return entries[i][1];
  }
  return undefined;
}

// Written with indexed loops and no closures or destructuring: the engine interprets (no JIT
// in WebAssembly), and `for (const [a, b] of …)` or `.some((n) => …)` go through the iterator
// protocol and calls in self-hosted JS at tens of thousands of instructions per step; this
// loop costs a fraction of that (measured in docs/hooks.md).
function scan(text, ignore) {
  const found = new Map(); // kind -> count
  if (text.length === 0) return found;
  let lower; // made on first need
  for (let i = 0; i < RULES.length; i++) {
    const rule = RULES[i];
    const kind = rule[0];
    const pattern = rule[1];
    const needles = rule[2];
    if (ignore.size > 0 && ignore.has(kind)) continue;
    const haystack = pattern.ignoreCase ? (lower ??= text.toLowerCase()) : text;
    let present = false;
    for (let j = 0; j < needles.length && !present; j++) present = haystack.includes(needles[j]);
    if (!present) continue;
    const hits = text.match(pattern);
    if (!hits) continue;
    // `anthropic-key` tokens also look like `openai-key` ones: count each secret once.
    let n = 0;
    for (let j = 0; j < hits.length; j++) {
      if (!(kind === 'openai-key' && hits[j].startsWith('sk-ant-'))) n++;
    }
    if (n > 0) found.set(kind, n);
  }
  return found;
}

export function postExecute(job) {
  // Split without a regex: a regex is compiled on its first use in every fresh instance.
  const ignore = new Set((cfg('ignore') ?? '').replaceAll(',', ' ').split(' ').filter(Boolean));
  const kinds = new Map();
  const streams = [];
  const tails = [
    ['stdout', job.stdoutTail],
    ['stderr', job.stderrTail],
  ];
  for (let i = 0; i < tails.length; i++) {
    const found = scan(tails[i][1], ignore);
    if (found.size === 0) continue;
    streams.push(tails[i][0]);
    found.forEach((n, kind) => kinds.set(kind, (kinds.get(kind) ?? 0) + n));
  }
  if (kinds.size === 0) {
    return { annotations: [['secret_count', '0']], verdict: { tag: 'pass' } };
  }
  const names = [...kinds.keys()].sort();
  const count = [...kinds.values()].reduce((a, b) => a + b, 0);
  const annotations = [
    ['secret_kinds', names.join(',')],
    ['secret_count', String(count)],
    ['secret_streams', streams.join(',')],
  ];
  const verdict =
    cfg('verdict') === 'none'
      ? undefined
      : { tag: 'fail', val: `output may contain secrets: ${names.join(', ')} (in ${streams.join(', ')})` };
  return { annotations, verdict };
}
