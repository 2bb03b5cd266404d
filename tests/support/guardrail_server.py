"""A guardrail service for tests: a real HTTP server on loopback answering the gateway's questions
(extproc/tools/guardrail.py) by the called tool's name, and keeping every question it was asked."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# tool name -> how the guardrail answers: allow | deny | modify (echo's text replaced) | slow | broken | nonsense
DEFAULT_RULES = {"add": "deny", "echo": "modify"}
MODIFIED_TEXT = "[guarded]"


class GuardrailServer:
    def __init__(
        self, rules: dict[str, str] | None = None, slow_s: float = 2.0, result_rules: dict[str, str] | None = None
    ) -> None:
        self.rules = dict(DEFAULT_RULES if rules is None else rules)
        self.result_rules = dict(result_rules or {})  # the same answers, about results ("phase": "result")
        self.slow_s = slow_s
        self.questions: list[dict[str, Any]] = []
        self.authorization: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                question = json.loads(self.rfile.read(int(self.headers["content-length"])))
                owner.questions.append(question)
                owner.authorization.append(self.headers.get("authorization", ""))
                rules = owner.result_rules if question.get("phase") == "result" else owner.rules
                rule = rules.get(question.get("name"), "allow")
                if rule == "slow":
                    time.sleep(owner.slow_s)
                    rule = "allow"
                if rule == "broken":
                    self.send_response(500)
                    self.end_headers()
                    return
                answer: dict[str, Any] = {"verdict": rule, "reason": f"rule {rule} for {question.get('name')}"}
                if rule == "modify" and question.get("phase") == "result":
                    text = owner.modified_text
                    content = [{"type": "text", "text": text}]
                    answer["result"] = {"content": content, "structuredContent": {"result": text}}
                elif rule == "modify":
                    answer["arguments"] = {**question["arguments"], "text": owner.modified_text}
                if rule == "nonsense":
                    answer = {"verdict": "maybe"}
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.modified_text = MODIFIED_TEXT
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/check"
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> GuardrailServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._thread.join()
        self._http.server_close()
