"""A real HTTP server on 127.0.0.1 speaking the chat.completions API, with scripted faults per conversation."""

import json
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Scenario: what each successive request for the same prompt gets. "ok" answers; the rest are faults.
SCENARIOS = {
    "ok": ["ok"],
    "rate_limited": ["429", "ok"],
    "server_error": ["500", "ok"],
    "slow": ["slow", "ok"],
    "malformed": ["malformed", "ok"],
    "empty": ["empty"],
    "always_500": ["500"],
}


class FakeOpenAI:
    """Serves chat completions; each distinct prompt gets the next scenario of `plan` on first sight."""

    def __init__(
        self,
        plan: list[str] | None = None,
        delay_s: float = 0.0,
        slow_s: float = 2.0,
        echo_secret_in_errors: bool = True,
    ):
        self.plan = plan or ["ok"]
        self.delay_s, self.slow_s, self.echo = delay_s, slow_s, echo_secret_in_errors
        self.lock = threading.Lock()
        self.scenario_of: dict[str, str] = {}
        self.requests: list[tuple[float, str, str]] = []  # (time, prompt, what was served)
        self.attempts: dict[str, int] = defaultdict(int)
        self.auth_headers: set[str] = set()
        self.served_ok = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                prompt = body["messages"][-1]["content"]
                with server.lock:
                    server.auth_headers.add(self.headers.get("authorization", ""))
                    scenario = server.scenario_of.setdefault(
                        prompt, server.plan[len(server.scenario_of) % len(server.plan)]
                    )
                    steps = SCENARIOS[scenario]
                    step = steps[min(server.attempts[prompt], len(steps) - 1)]
                    server.attempts[prompt] += 1
                    server.requests.append((time.monotonic(), prompt, step))
                time.sleep(server.delay_s)
                server.respond(self, step, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def respond(self, handler: BaseHTTPRequestHandler, step: str, body: dict) -> None:
        auth = handler.headers.get("authorization", "")
        if step in ("429", "500"):
            handler.send_response(int(step))
            if step == "429":
                handler.send_header("Retry-After", "1")
            handler.send_header("content-type", "application/json")
            handler.end_headers()
            detail = f"rejected request with {auth}" if self.echo else "rejected"
            handler.wfile.write(json.dumps({"error": {"message": detail}}).encode())
            return
        if step == "slow":
            time.sleep(self.slow_s)
        content = "" if step == "empty" else f"Someone asks about: {body['messages'][-1]['content'][14:80]}"
        payload = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62},
        }
        data = b'{"id": "chatcmpl-1", "choi' if step == "malformed" else json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        if step != "malformed" and step != "empty":
            with self.lock:
                self.served_ok += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
