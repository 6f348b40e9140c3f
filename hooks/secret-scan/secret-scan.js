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
  for (const [k, v] of config()) {
    if (k === key) return v;
  }
  return undefined;
}

function scan(text, ignore) {
  const found = new Map(); // kind -> count
  let lower; // made on first need
  for (const [kind, pattern, needles] of RULES) {
    if (ignore.has(kind)) continue;
    const haystack = pattern.ignoreCase ? (lower ??= text.toLowerCase()) : text;
    if (!needles.some((n) => haystack.includes(n))) continue;
    const hits = text.match(pattern);
    // `anthropic-key` tokens also look like `openai-key` ones: count each secret once.
    const n = hits ? hits.filter((h) => !(kind === 'openai-key' && h.startsWith('sk-ant-'))).length : 0;
    if (n > 0) found.set(kind, n);
  }
  return found;
}

export function postExecute(job) {
  const ignore = new Set((cfg('ignore') ?? '').split(/[\s,]+/).filter(Boolean));
  const kinds = new Map();
  const streams = [];
  for (const [stream, text] of [['stdout', job.stdoutTail], ['stderr', job.stderrTail]]) {
    const found = scan(text, ignore);
    if (found.size > 0) streams.push(stream);
    for (const [kind, n] of found) kinds.set(kind, (kinds.get(kind) ?? 0) + n);
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
