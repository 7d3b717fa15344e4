"""An MCP server built with the official SDK's MCPServer (FastMCP in mcp 1.x), used by the
interop tests as an upstream of Interlock: `python3 mcp_upstream_server.py http PORT` serves
Streamable HTTP on 127.0.0.1:PORT/mcp; `python3 mcp_upstream_server.py stdio` speaks stdio."""
import os
import sys

import anyio
from mcp.server.mcpserver import Context, MCPServer

app = MCPServer(os.environ.get("SERVER_NAME", "upstream"))


def add(a: int, b: int) -> int:
    return a + b


# A test changes what the server tells about `add` to see Interlock quarantine it.
add.__doc__ = os.environ.get("ADD_DESCRIPTION", "Adds two integers.")
app.tool()(add)


@app.tool()
def pid() -> int:
    """The process id of this server."""
    return os.getpid()


@app.tool()
def seen(ctx: Context) -> dict:
    """What the server received with this call: the _meta and the authorization header."""
    meta = ctx.request_context.meta
    if meta is not None and not isinstance(meta, dict):
        meta = meta.model_dump(exclude_none=True)
    try:
        headers = ctx.headers or {}
    except Exception:  # stdio has no headers
        headers = {}
    return {"meta": meta or {}, "authorization": headers.get("authorization"), "secret_env": os.environ.get("UPSTREAM_SECRET")}


@app.tool()
async def count(steps: int, ctx: Context) -> str:
    """Counts to `steps`, reporting progress at each step."""
    for step in range(steps):
        await ctx.report_progress(step + 1, steps, f"step {step + 1} of {steps}")
        await anyio.sleep(0.05)
    return f"counted to {steps}"


@app.tool()
async def sleep(seconds: float) -> str:
    """Sleeps, then answers; a marker file tells whether it was cancelled first."""
    marker = os.environ.get("CANCEL_MARKER")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        if marker:
            with open(marker, "a") as handle:
                handle.write("cancelled\n")
        raise
    return "awake"


if __name__ == "__main__":
    if sys.argv[1] == "http":
        app.run(transport="streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        app.run()
