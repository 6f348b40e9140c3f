"""The MCP job tools driven by the official MCP Python SDK (`mcp` on PyPI), as an agent would.

    python mcp_jobs.py MODE stdio CCX [ARGS...]   # launch `CCX ARGS...` (e.g. `ccx mcp`)
    python mcp_jobs.py MODE http URL              # Streamable HTTP, e.g. http://127.0.0.1:8003/mcp

MODE is `auto` (the SDK negotiates revision 2026-07-28, without the initialize handshake) or
`legacy` (revision 2025-11-25, with it). Prints the negotiated revision; exits non-zero, with
the reason, on any mismatch.
"""

import sys

import anyio
from mcp import Client, StdioServerParameters


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAILED: {what}")


async def main(mode, transport, target, args):
    if transport == "stdio":
        server = StdioServerParameters(command=target, args=args, env={"PATH": "/usr/bin:/bin"})
    else:
        server = target
    async with Client(server, mode=mode) as client:
        version = getattr(client, "protocol_version", None)
        print(f"protocol {version}")
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        for name in ["job_start", "job_output", "job_wait", "job_cancel", "job_list", "execute"]:
            check(name in tools, f"tool {name} listed: {tools}")

        r = await client.call_tool(
            "job_start", {"command": "printf 'one\\n'; sleep 0.5; printf 'two\\n'; exit 5"}
        )
        check(not r.is_error, f"job_start: {r}")
        job = r.structured_content["job_id"]
        r = await client.call_tool("job_wait", {"job_id": job, "timeout_s": 0.1})
        check(r.structured_content["done"] is False, f"still running: {r.structured_content}")
        r = await client.call_tool("job_wait", {"job_id": job, "timeout_s": 30})
        s = r.structured_content
        check((s["status"], s["exit_code"], s["done"]) == ("failed", 5, True), f"job_wait: {s}")
        r = await client.call_tool("job_output", {"job_id": job, "max_bytes": 4})
        s = r.structured_content
        check((s["output"], s["next_offset"]) == ("one\n", 4), f"first page: {s}")
        r = await client.call_tool("job_output", {"job_id": job, "offset": s["next_offset"]})
        s = r.structured_content
        check((s["output"], s["done"], s["exit_code"]) == ("two\n", True, 5), f"rest: {s}")

        r = await client.call_tool("job_start", {"command": "sleep 60"})
        sleeper = r.structured_content["job_id"]
        r = await client.call_tool("job_cancel", {"job_id": sleeper})
        check(not r.is_error, f"job_cancel: {r}")
        r = await client.call_tool("job_wait", {"job_id": sleeper, "timeout_s": 30})
        check(r.structured_content["status"] == "canceled", f"canceled: {r.structured_content}")
        r = await client.call_tool("job_list", {})
        ids = [j["job_id"] for j in r.structured_content["jobs"]]
        check(job in ids and sleeper in ids, f"job_list: {ids}")
        r = await client.call_tool("execute", {"command": "echo direct"})
        check(r.structured_content["stdout"] == "direct\n", f"execute: {r.structured_content}")
    print("ok")


if __name__ == "__main__":
    mode, transport, target, *rest = sys.argv[1:]
    anyio.run(main, mode, transport, target, rest)
