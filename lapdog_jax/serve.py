r"""Talk to a trained run over HTTP: a JSON API and a one-page chat for the browser.

  python -m lapdog_jax.serve --workdir=runs/demo [--step=N] [--host=127.0.0.1] [--port=8000]

Restores the checkpoint (default the latest) once, params and passage index as `chat` does,
then serves (Starlette on uvicorn) until Ctrl-C:

- `POST /chat` `{"persona": [...], "history": [...], "message": "...", "k": 3,
  "temperature": 0}` -> `{"reply": "...", "stories": [{"id", "title", "text", "score"}, ...],
  "step": N}`: `chat`'s turn for the conversation `history + [message]` (history alternates
  the user's messages and the replies, oldest first); `history`, `k` (default 3, or all the
  stories when fewer) and `temperature` (default 0: greedy, the reply `predict` gives) may be
  left out;
- `GET /`: the chat page (persona box, the conversation, each reply's stories and scores);
- `GET /health`: `{"status": "ok", "step": N, "stories": n, "read": r}` (the run's stories,
  and how many of a turn's top ones the reader reads).

Requests run one at a time on the device (a lock: concurrent clients queue). A bad request
gets status 400 and `{"error": "FIELD: what is wrong", "field": "FIELD"}`; the server goes on.
`--port=0` picks a free port; the line `serving step N on http://HOST:PORT/` on stdout says
which, once the run is loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time

import anyio
import uvicorn
from absl import flags, logging
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from lapdog_jax import chat as chat_lib
from lapdog_jax import cli, distributed, experiment

MAX_BODY_BYTES = 64 * 1024
MAX_CHARS = 1000  # of the message, a persona line or a turn of the history
MAX_PERSONA_LINES = 20
MAX_HISTORY_TURNS = 100
MAX_TEMPERATURE = 2.0
DEFAULT_K = 3
FIELDS = ("persona", "history", "message", "k", "temperature")
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serve.html")


class BadRequest(ValueError):
    """A request's fault, named by its field: answered with status 400."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class Turn:
    """A checked `POST /chat` request."""

    persona: list[str]
    history: list[str]
    message: str
    k: int
    temperature: float


def _string(value, field: str) -> str:
    """`value` stripped, if it is a string of at most MAX_CHARS characters."""
    if not isinstance(value, str):
        raise BadRequest(field, f"expected a string, got {_kind(value)}")
    if len(value) > MAX_CHARS:
        raise BadRequest(field, f"over {MAX_CHARS} characters ({len(value)})")
    return value.strip()


def _strings(value, field: str, max_items: int) -> list[str]:
    """`value` as a list of at most `max_items` strings, each checked by `_string`."""
    if not isinstance(value, list):
        raise BadRequest(field, f"expected a list of strings, got {_kind(value)}")
    if len(value) > max_items:
        raise BadRequest(field, f"over {max_items} items ({len(value)})")
    return [_string(item, f"{field}[{i}]") for i, item in enumerate(value)]


def _kind(value) -> str:
    """The JSON name of a value's type, for error messages."""
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value),
                                                                       type(value).__name__)


def parse_turn(body: bytes, max_k: int) -> Turn:
    """The request in a `POST /chat` body; raises BadRequest naming the first bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest("body", f"not JSON ({e})") from None
    if not isinstance(data, dict):
        raise BadRequest("body", f"expected a JSON object, got {_kind(data)}")
    for name in data:
        if name not in FIELDS:
            raise BadRequest(name, f"unknown field (the fields: {', '.join(FIELDS)})")
    for name in ("persona", "message"):
        if name not in data:
            raise BadRequest(name, "missing")
    persona = [line for line in _strings(data["persona"], "persona", MAX_PERSONA_LINES) if line]
    if not persona:
        raise BadRequest("persona", "no line (give the persona's sentences, one per item)")
    history = _strings(data.get("history", []), "history", MAX_HISTORY_TURNS)
    message = _string(data["message"], "message")
    if not message:
        raise BadRequest("message", "empty")
    k = data.get("k", min(DEFAULT_K, max_k))
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise BadRequest("k", f"expected an integer from 1 to {max_k}, got {json.dumps(k)}")
    temperature = data.get("temperature", 0)
    if (isinstance(temperature, bool) or not isinstance(temperature, int | float)
            or not 0 <= temperature <= MAX_TEMPERATURE):  # (NaN fails the range too)
        raise BadRequest("temperature", f"expected a number from 0 to {MAX_TEMPERATURE:g}, "
                                        f"got {json.dumps(temperature)}")
    return Turn(persona, history, message, k, float(temperature))


async def _read_body(request: Request) -> bytes:
    """The request's body, refused past MAX_BODY_BYTES without reading the rest."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest("body", f"over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def max_k(chat: chat_lib.Chat) -> int:
    """The largest `k` a request may ask: the run's stories (1 for a closed-book run)."""
    return len(chat.retriever.passages) if chat.retriever is not None else 1


def make_app(chat: chat_lib.Chat) -> Starlette:
    """The server's routes around a restored chat; one request at a time reaches it."""
    lock = asyncio.Lock()  # first come, first served
    page = open(PAGE, encoding="utf-8").read()

    async def post_chat(request: Request) -> JSONResponse:
        """`POST /chat`: the reply and the stories for one turn."""
        try:
            turn = parse_turn(await _read_body(request), max_k(chat))
        except BadRequest as e:
            logging.info("400 %s", e)
            return JSONResponse({"error": str(e), "field": e.field}, status_code=400)
        async with lock:
            start = time.perf_counter()
            stories, reply = await anyio.to_thread.run_sync(
                chat.turn, turn.persona, turn.history + [turn.message], turn.k,
                turn.temperature)
        logging.info("chat: turns=%d, k=%d, temperature=%g in %.2f s", len(turn.history) + 1,
                     turn.k, turn.temperature, time.perf_counter() - start)
        return JSONResponse({"reply": reply, "stories": stories, "step": chat.step})

    async def health(_: Request) -> JSONResponse:
        """`GET /health`: the server is up, with the step it serves."""
        return JSONResponse({"status": "ok", "step": chat.step,
                             "stories": len(chat.retriever.passages) if chat.retriever else 0,
                             "read": chat.exp.spec.n_passages if chat.retriever else 0})

    async def index(_: Request) -> HTMLResponse:
        """`GET /`: the chat page."""
        return HTMLResponse(page)

    async def failed(_: Request, error: Exception) -> JSONResponse:
        """A fault of ours: a one-line 500; the server goes on."""
        logging.exception("request failed")
        return JSONResponse({"error": f"{type(error).__name__}: {error}".splitlines()[0]},
                            status_code=500)

    return Starlette(routes=[Route("/", index), Route("/health", health),
                             Route("/chat", post_chat, methods=["POST"])],
                     exception_handlers={Exception: failed})


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); a one-line error if it can't."""
    try:
        return socket.create_server((host, port), family=socket.AF_INET6 if ":" in host
                                    else socket.AF_INET)
    except OSError as e:
        raise experiment.ConfigError(f"--host={host} --port={port}: cannot listen there "
                                     f"({os.strerror(e.errno) if e.errno else e})") from None


def main():
    """CLI: restores the run, then serves until stopped."""
    f = flags.FLAGS
    sock = listen(f.host, f.port)  # (before the slow restore: a busy port fails at once)
    distributed.initialize()
    chat = chat_lib.Chat.restore(f.workdir, f.step)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving step {chat.step} on http://{shown}:{port}/", flush=True)
    server = uvicorn.Server(uvicorn.Config(make_app(chat), log_config=None, log_level="warning",
                                           access_log=False))
    server.run(sockets=[sock])


def _define_flags() -> None:
    """The command line's flags (defined when run: the module imports without them)."""
    flags.DEFINE_string("workdir", None, "A training workdir (has config.json).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
    flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every "
                        "interface; the server has no authentication).")
    flags.DEFINE_integer("port", 8000, "Port to listen on (0: a free one, printed).",
                         lower_bound=0, upper_bound=65535)


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["workdir"])
    cli.run(main)
