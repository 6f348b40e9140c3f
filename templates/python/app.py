"""{{name}}: a ccx hook. See README.md for building and trying it, and ccx's docs/hooks.md
for the contract. componentize-py generates the `wit_world` module from wit/hooks.wit."""

import wit_world
from wit_world.imports import host
from wit_world.imports.types import (
@@pre
    ExecRequest,
    PreDecision,
    PreDecision_Deny,
    PreDecision_Modify,
    RequestPatch,
@@end
@@post
    ExecResult,
    JobStatus,
    PostOutcome,
    Verdict_Fail,
    Verdict_Pass,
@@end
)


def config(key, default=None):
    """A value from this hook's `config` table in ccx.toml."""
    for k, v in host.config():
        if k == key:
            return v
    return default


class WitWorld(wit_world.WitWorld):
@@pre
    def pre_execute(self, request: ExecRequest) -> PreDecision:
        """Runs before a command: allow it, deny it with a reason, or modify it."""
        # Example: deny commands containing any of the comma-separated `deny` words.
        for word in filter(None, (w.strip() for w in config("deny", "").split(","))):
            if word in request.command:
                return PreDecision_Deny("`%s` is not allowed here" % word)
        host.log(host.Level.DEBUG, "allowing `%s`" % request.command)
        # Example: tell the command it runs under this hook.
        return PreDecision_Modify(
            RequestPatch(
                command=None,
                cwd=None,
                set_env=[("CCX_HOOK", "{{name}}")],
                unset_env=[],
                timeout_ms=None,
                limits=None,
            )
        )

@@end
@@post
    def post_execute(self, job: ExecResult) -> PostOutcome:
        """Runs after a command: annotate the job and, if you like, judge it."""
        annotations = [
            ("stdout_tail_lines", str(len(job.stdout_tail.splitlines()))),
            ("stdout_bytes", str(job.stdout_bytes)),
        ]
        # Example: fail jobs that did not exit 0 when `fail_on_error = true`.
        verdict = None
        if config("fail_on_error") == "true":
            if job.status == JobStatus.COMPLETED and job.exit_code == 0:
                verdict = Verdict_Pass()
            elif job.exit_code is not None:
                verdict = Verdict_Fail("exit code %d" % job.exit_code)
            else:
                verdict = Verdict_Fail("the command did not exit")
        return PostOutcome(annotations=annotations, verdict=verdict)

@@end
