"""agent-result-check: a ccx post-hook for agent runs (`claude -p --output-format stream-json`).

It reads the job's stdout tail as stream-json (one JSON event per line), finds the final
`{"type": "result", ...}` event and judges the run:

- annotations: `result_subtype` (`success`, `error_max_turns`, `error_during_execution`, ... or
  `missing`), `is_error`, `num_turns`, `cost_usd`, `input_tokens`, `output_tokens`,
  `session_id` (each only when present), `rate_limited`, `usage_limited` and `resets` (when a
  usage-limit message says when the limit resets);
- verdict: `fail` when a usage limit was hit, when the run ended rate-limited, when there is no
  result event (the agent did not complete: killed, timed out, crashed) or when the result is an
  error; `pass` otherwise.

Jobs that are not agent runs (no stream-json events in the tail, and no `claude` in the command)
get no annotations and no verdict.

Only the last `[sandbox] tail_bytes` of stdout reach a post-hook (4096 by default). A result
event longer than that is cut at the front: the hook then reads the fields it can still see
(cost, tokens) and annotates `result_truncated = true`. Raise `tail_bytes` for long answers.

Config: `programs` (default `claude`): words that mark a command as an agent run even when its
output has no events yet.
"""

import json
import re

import wit_world
from wit_world.imports import host
from wit_world.imports.types import (
    ExecResult,
    JobStatus,
    PostOutcome,
    Verdict_Fail,
    Verdict_Pass,
)

EVENT_TYPES = {"system", "assistant", "user", "result", "stream_event"}

USAGE_LIMIT = re.compile(
    r"usage limit|(?:5-hour|session|weekly|daily|opus|sonnet) limit|limit will reset"
    r"|credit balance is too low|out of (?:extra )?usage",
    re.IGNORECASE,
)
RATE_LIMIT = re.compile(
    r"rate[ _-]?limit|\b429\b|too many requests|overloaded_error|\b529\b", re.IGNORECASE
)
# "Claude AI usage limit reached|1767225600" (epoch seconds) or "... resets 3pm (Europe/Paris)".
RESETS = re.compile(r"limit reached\|(\d{9,11})|resets? (?:at )?([^\n\"\\.]{1,40})", re.IGNORECASE)
# Compiled here, at build time (componentize-py snapshots the module after importing it): a
# pattern compiled inside a call is compiled again in every fresh instance, by `re`'s compiler
# written in Python, at about half a million instructions.
WORD_SEPARATORS = re.compile(r"[\s;&|()/]+")
CUT_STRINGS = {k: re.compile(r'"%s":"([^"]*)"' % k) for k in ("subtype", "session_id")}
CUT_NUMBERS = {
    k: re.compile(r'"%s":(-?[0-9][0-9.eE+-]*)' % k)
    for k in ("total_cost_usd", "cost_usd", "num_turns", "input_tokens", "output_tokens")
}
CUT_IS_ERROR = re.compile(r'"is_error":(true|false)')


def config(key, default=None):
    for k, v in host.config():
        if k == key:
            return v
    return default


def events(tail):
    """The stream-json events in the tail; the first line may be cut and is skipped if so."""
    found = []
    for line in tail.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event.get("type") in EVENT_TYPES:
            found.append(event)
    return found


def cut_result(tail):
    """The fields still visible in a result event cut at the front by the tail's size limit.

    Such an event is the tail's last line, does not parse, and still holds the keys that
    follow the (long) `result` text: `session_id`, `total_cost_usd`, `usage`."""
    lines = [line for line in tail.splitlines() if line.strip()]
    if not lines:
        return None
    last = lines[-1].replace('": ', '":')
    if '"total_cost_usd":' not in last and '"type":"result"' not in last:
        return None
    try:
        json.loads(last)
        return None  # a complete line: not cut
    except ValueError:
        pass
    fields = {"_text": last}
    for key, pattern in CUT_STRINGS.items():
        m = pattern.search(last)
        if m:
            fields[key] = m.group(1)
    for key, pattern in CUT_NUMBERS.items():
        m = pattern.search(last)
        if m:
            fields[key] = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    m = CUT_IS_ERROR.search(last)
    if m:
        fields["is_error"] = m.group(1) == "true"
    return fields


def api_errors(event):
    """The text of an assistant message that reports an API error, else ''."""
    if event.get("type") != "assistant":
        return ""
    message = event.get("message") if isinstance(event.get("message"), dict) else {}
    texts = [c.get("text", "") for c in message.get("content") or [] if isinstance(c, dict)]
    if event.get("isApiErrorMessage") or event.get("error"):
        return "\n".join(texts + [str(event.get("error") or "")])
    return "\n".join(t for t in texts if t.startswith("API Error"))


def number(value):
    if isinstance(value, float):
        return ("%.6f" % value).rstrip("0").rstrip(".")
    return str(value)


class WitWorld(wit_world.WitWorld):
    def post_execute(self, job: ExecResult) -> PostOutcome:
        tail = job.stdout_tail
        found = events(tail)
        programs = config("programs", "claude").split()
        words = WORD_SEPARATORS.split(job.request.command)
        notes = {}
        results = [e for e in found if e.get("type") == "result"]
        result = results[-1] if results else None
        truncated = False
        if result is None:
            result = cut_result(tail)
            truncated = result is not None
            if truncated:
                notes["result_truncated"] = "true"
        if not found and not truncated and not any(p in words for p in programs):
            return PostOutcome(annotations=[], verdict=None)

        # Limit messages are looked for where the agent's runtime reports them (stderr, lines
        # that are not events, the result text, API error messages), not in the conversation,
        # which may well discuss rate limits.
        plain = [line for line in tail.splitlines() if not line.lstrip().startswith("{")]
        text = "\n".join([job.stderr_tail] + plain + [api_errors(e) for e in found])
        if result is not None:
            # A cut event may have lost its subtype: "unknown" is judged by what is left.
            subtype = result.get("subtype", "unknown")
            is_error = bool(result.get("is_error", subtype not in ("success", "unknown")))
            notes["result_subtype"] = subtype
            if "is_error" in result or subtype != "unknown":
                notes["is_error"] = "true" if is_error else "false"
            cost = result.get("total_cost_usd", result.get("cost_usd"))
            if cost is not None:
                notes["cost_usd"] = number(cost)
            if "num_turns" in result:
                notes["num_turns"] = number(result["num_turns"])
            usage = result.get("usage") if isinstance(result.get("usage"), dict) else result
            for key in ("input_tokens", "output_tokens"):
                if key in usage:
                    notes[key] = number(usage[key])
            if result.get("session_id"):
                notes["session_id"] = str(result["session_id"])
            if isinstance(result.get("result"), str):
                text += "\n" + result["result"]
            if truncated:
                text += "\n" + result["_text"]
        else:
            subtype, is_error = "missing", True
            notes["result_subtype"] = "missing"

        usage_limited = bool(USAGE_LIMIT.search(text))
        rate_limited = bool(RATE_LIMIT.search(text))
        notes["usage_limited"] = "true" if usage_limited else "false"
        notes["rate_limited"] = "true" if rate_limited else "false"
        resets = RESETS.search(text) if usage_limited else None
        if resets:
            notes["resets"] = resets.group(1) or resets.group(2).strip()

        if usage_limited:
            verdict = Verdict_Fail("usage limit reached" + (
                " (resets %s)" % notes["resets"] if "resets" in notes else ""))
        elif rate_limited and (result is None or is_error):
            verdict = Verdict_Fail("rate limited")
        elif result is None:
            status = job.status.name.lower().replace("_", "-")
            verdict = Verdict_Fail("no result event: the agent did not complete (job %s)" % status)
        elif is_error or subtype not in ("success", "unknown"):
            verdict = Verdict_Fail("agent ended with %s" % subtype)
        elif job.status != JobStatus.COMPLETED or job.exit_code not in (0, None):
            verdict = Verdict_Fail("agent reported success but exited with %s" % job.exit_code)
        else:
            verdict = Verdict_Pass()
        if truncated and isinstance(verdict, Verdict_Pass):
            host.log(host.Level.INFO, "result event cut by tail_bytes; judged from what remained")
        return PostOutcome(annotations=sorted(notes.items()), verdict=verdict)
