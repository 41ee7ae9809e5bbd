"""The traditional baseline: Hugging Face Transformers behind a minimal OpenAI-style endpoint.

    .venv/bin/python benchmarks/hf_server.py MODEL_PATH --port 8004 [--name tiny]

Serves ``GET /v1/models`` and ``POST /v1/completions`` (streaming or not, ``max_tokens``,
``ignore_eos``, ``temperature`` 0 = greedy, ``stream_options.include_usage``). It generates one
request at a time, token by token with the model's KV cache, the way a plain Transformers
server without batching does; requests that arrive meanwhile wait their turn. No chat
endpoint, no auth. Only a benchmark baseline (the ``transformers`` path of ``benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


class Generator:
    """A causal LM that generates for one request at a time."""

    def __init__(self, path: str, name: str) -> None:
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.lock = threading.Lock()

    @torch.inference_mode()
    def tokens(
        self, prompt: str, max_tokens: int, ignore_eos: bool, temperature: float
    ) -> Iterator[tuple[str, int]]:
        """Yield (text piece, prompt token count) per generated token."""
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        n_prompt = ids.shape[1]
        past = None
        step_ids = ids
        for _ in range(max_tokens):
            out = self.model(input_ids=step_ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1]
            if temperature > 0:
                token = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1))
            else:
                token = int(logits.argmax())
            if token == self.tokenizer.eos_token_id and not ignore_eos:
                return
            yield self.tokenizer.decode([token]), n_prompt
            step_ids = torch.tensor([[token]])


def handler(gen: Generator) -> type[BaseHTTPRequestHandler]:
    """The request handler class of a server answering with ``gen``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # one small write per token must not wait for an ACK

        def log_message(self, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                self._json(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": gen.name, "object": "model", "owned_by": "baseline"}],
                    },
                )
            elif self.path in ("/health", "/v1/health"):
                self._json(200, {})
            else:
                self._json(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            if self.path.rstrip("/") not in ("/v1/completions", "/completions"):
                self._json(404, {"error": {"message": f"no route {self.path}"}})
                return
            if body.get("model") not in (None, gen.name):
                self._json(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
                return
            prompt = body.get("prompt", "")
            prompt = prompt[0] if isinstance(prompt, list) else prompt
            args = (
                prompt,
                int(body.get("max_tokens") or 16),
                bool(body.get("ignore_eos")),
                float(body.get("temperature", 1.0)),
            )
            rid = f"cmpl-{uuid.uuid4().hex}"
            if body.get("stream"):
                self._stream(
                    rid, args, bool((body.get("stream_options") or {}).get("include_usage"))
                )
                return
            with gen.lock:
                pieces = list(gen.tokens(*args))
            n_prompt = pieces[0][1] if pieces else 0
            self._json(
                200,
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": gen.name,
                    "choices": [
                        {
                            "index": 0,
                            "text": "".join(p for p, _ in pieces),
                            "finish_reason": "length",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": n_prompt,
                        "completion_tokens": len(pieces),
                        "total_tokens": n_prompt + len(pieces),
                    },
                },
            )

        def _stream(self, rid: str, args: tuple[str, int, bool, float], usage: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(payload: str) -> None:
                data = f"data: {payload}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            count = n_prompt = 0
            with gen.lock:
                for piece, prompt_len in gen.tokens(*args):
                    count, n_prompt = count + 1, prompt_len
                    send(
                        json.dumps(
                            {
                                "id": rid,
                                "object": "text_completion",
                                "model": gen.name,
                                "choices": [{"index": 0, "text": piece, "finish_reason": None}],
                            }
                        )
                    )
            if usage:
                send(
                    json.dumps(
                        {
                            "id": rid,
                            "object": "text_completion",
                            "model": gen.name,
                            "choices": [],
                            "usage": {
                                "prompt_tokens": n_prompt,
                                "completion_tokens": count,
                                "total_tokens": n_prompt + count,
                            },
                        }
                    )
                )
            send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


class Server(ThreadingHTTPServer):
    """Accepts many waiting connections (the default backlog is 5) in daemon threads."""

    request_queue_size = 256
    daemon_threads = True


def main() -> None:
    """Load the model and serve it until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--name", default="tiny", help="model name clients send")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
    parser.add_argument(
        "--threads",
        type=int,
        default=max((os.cpu_count() or 2) - 1, 1),
        help="torch threads; default: one core less than the machine has, as "
        "vLLM's CPU backend does (on a busy small machine, more threads stall)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = Generator(args.model, args.name)
    server = Server((args.host, args.port), handler(gen))
    print(f"serving {args.model} as {args.name!r} on http://{args.host}:{args.port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
