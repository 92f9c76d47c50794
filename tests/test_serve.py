"""`lapdog_jax.serve`'s HTTP layer around a stand-in chat (no model, so it runs in a second):
one turn at a time reaches the chat, the other clients wait their turn, `/health` answers
meanwhile. The model behind it is tested on a trained run in tests/test_cli.py."""

import concurrent.futures
import dataclasses
import threading
import time
import types

import pytest
import uvicorn

from lapdog_jax import serve
from tests.test_cli import http

TURN_S = 0.3


@dataclasses.dataclass
class SlowChat:
    """A closed-book `chat.Chat` stand-in whose turn takes TURN_S and counts who is inside."""

    step: int = 7
    retriever: object = None
    exp: object = dataclasses.field(default_factory=lambda: types.SimpleNamespace(
        spec=types.SimpleNamespace(n_passages=1)))
    inside: int = 0
    most_inside: int = 0
    calls: list = dataclasses.field(default_factory=list)
    guard: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def turn(self, persona, turns, k, temperature):
        """Echoes the message after TURN_S, noting how many turns overlapped."""
        with self.guard:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.calls.append((persona, turns, k, temperature))
        time.sleep(TURN_S)
        with self.guard:
            self.inside -= 1
        return [], f"you said {turns[-1]}"


@pytest.fixture
def served():
    """(base url, the stand-in chat) of a server on a free port, in a thread."""
    chat = SlowChat()
    sock = serve.listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(serve.make_app(chat), log_config=None,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", chat
    server.should_exit = True
    thread.join(timeout=10)


def test_one_turn_at_a_time_the_rest_queue_and_health_answers(served):
    """Four clients at once: each gets its own reply, the chat never runs two turns at once,
    and `/health` answers while they wait."""
    url, chat = served
    messages = [f"message {i}" for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(len(messages)) as pool:
        start = time.perf_counter()
        replies = pool.map(lambda m: http(f"{url}/chat", {"persona": ["p ."], "message": m}),
                           messages)
        time.sleep(TURN_S / 2)
        health = http(f"{url}/health")
        health_s = time.perf_counter() - start
        replies = list(replies)
    assert [r for _, r in replies] == [{"reply": f"you said {m}", "stories": [], "step": 7}
                                       for m in messages]
    assert chat.most_inside == 1 and len(chat.calls) == 4
    assert time.perf_counter() - start >= 4 * TURN_S
    assert health == (200, {"status": "ok", "step": 7, "stories": 0, "read": 0})
    assert health_s < 2 * TURN_S  # not queued behind the turns


def test_defaults_and_a_closed_book_k(served):
    """Left out: history [], k 3 or all the stories (1 closed-book), temperature 0; strings
    are stripped and empty persona lines dropped."""
    url, chat = served
    status, _ = http(f"{url}/chat", {"persona": [" p . ", ""], "message": " hi "})
    assert status == 200
    assert chat.calls == [(["p ."], ["hi"], 1, 0.0)]
    status, got = http(f"{url}/chat", {"persona": ["p ."], "message": "hi", "k": 2})
    assert (status, got["field"]) == (400, "k") and "from 1 to 1" in got["error"]
