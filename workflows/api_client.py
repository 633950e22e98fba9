"""Run an API-format workflow on a ComfyUI server, headless, with the Python standard library only.

    python workflows/api_client.py workflows/hunyuan_video_fp8_t2v_sampler_api.json \\
        --server 127.0.0.1:8188 --set 2.text="a cat surfing" --set 10.seed=7 --out ./videos

Posts the graph to ``/prompt``, follows progress on the ``/ws`` websocket until ComfyUI reports ``executing`` with
``node: null`` for the prompt (sent after the history entry is stored, unlike ``execution_success``), then fetches
the outputs listed in ``/history/<id>`` through ``/view``. The websocket is a minimal RFC 6455 client (text, binary,
ping/pong, close, fragmented frames) so nothing needs installing.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ComfyError(RuntimeError):
    """The server refused the prompt or reported an execution error; the message carries ComfyUI's details."""


class WebSocket:
    """A blocking RFC 6455 client connection (no extensions, no TLS)."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection during the websocket handshake")
            head += chunk
        head, self._buffer = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise ConnectionError(f"websocket upgrade refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise ConnectionError("websocket handshake failed: bad Sec-WebSocket-Accept")

    def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise ConnectionError("websocket closed by the server")
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def send(self, opcode: int, payload: bytes = b"") -> None:
        """One final frame; client frames must be masked (RFC 6455 section 5.3)."""
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def receive(self) -> tuple[int, bytes]:
        """The next complete data message as (opcode, payload); answers pings, raises on close."""
        message, message_op = b"", None
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == OP_PING:
                self.send(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                raise ConnectionError("websocket closed by the server")
            if opcode != OP_CONT:
                message_op = opcode
            message += payload
            if fin:
                return message_op, message

    def close(self) -> None:
        try:
            self.send(OP_CLOSE, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


class ComfyClient:
    """One client id talking to one ComfyUI server."""

    def __init__(self, server: str = "127.0.0.1:8188", client_id: Optional[str] = None, timeout: float = 600.0):
        host, _, port = server.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"server {server!r} must be HOST:PORT, e.g. 127.0.0.1:8188")
        self.host, self.port = host or "127.0.0.1", int(port)
        self.base = f"http://{self.host}:{self.port}"
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.ws: Optional[WebSocket] = None

    # --- HTTP -----------------------------------------------------------------------------------------------------

    def _request(self, path: str, body: Optional[dict] = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as e:
            raise ComfyError(f"{path}: HTTP {e.code}: {e.read().decode(errors='replace')}") from None

    def get_json(self, path: str) -> Any:
        return json.loads(self._request(path))

    def queue_prompt(self, prompt: dict) -> str:
        """POST an API-format graph; returns the prompt id. Validation errors raise with ComfyUI's node errors."""
        reply = json.loads(self._request("/prompt", {"prompt": prompt, "client_id": self.client_id}))
        if reply.get("node_errors"):
            raise ComfyError(f"prompt rejected: {json.dumps(reply['node_errors'])}")
        return reply["prompt_id"]

    def history(self, prompt_id: str) -> dict:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id, {})

    def interrupt(self) -> None:
        self._request("/interrupt", {})

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        query = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": folder_type})
        return self._request(f"/view?{query}")

    # --- websocket ------------------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the websocket (before queueing, so no message of the prompt is missed)."""
        if self.ws is None:
            self.ws = WebSocket(self.host, self.port, f"/ws?clientId={self.client_id}", timeout=self.timeout)

    def close(self) -> None:
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def events(self) -> Iterator[dict]:
        """JSON messages from the server; binary frames (previews) become {"type": "binary", "event": n}."""
        self.connect()
        while True:
            opcode, payload = self.ws.receive()
            if opcode == OP_TEXT:
                yield json.loads(payload)
            else:
                yield {"type": "binary", "event": struct.unpack(">I", payload[:4])[0] if len(payload) >= 4 else 0}

    def wait(self, prompt_id: str, on_event: Optional[Callable[[dict], None]] = None) -> dict:
        """Follow the prompt until ``executing`` with ``node: null``; returns its history entry.

        Raises ComfyError on ``execution_error`` and on ``execution_interrupted``.
        """
        for message in self.events():
            if on_event is not None:
                on_event(message)
            data = message.get("data", {})
            if isinstance(data, dict) and data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = message.get("type")
            if kind == "execution_error":
                raise ComfyError(f"{data.get('node_type')} (node {data.get('node_id')}) failed: "
                                 f"{data.get('exception_type')}: {data.get('exception_message')}")
            if kind == "execution_interrupted":
                raise ComfyError(f"prompt {prompt_id} was interrupted at node {data.get('node_id')}")
            if kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return self.history(prompt_id)
        raise ComfyError("websocket ended before the prompt finished")

    def run(self, prompt: dict, on_event: Optional[Callable[[dict], None]] = None) -> dict:
        """Queue ``prompt``, wait for it, and return its history entry."""
        self.connect()
        return self.wait(self.queue_prompt(prompt), on_event)


def output_files(entry: dict) -> list[dict]:
    """Every saved file in a history entry: dicts with filename, subfolder, type (images, videos, gifs, ...)."""
    files = []
    for ui in entry.get("outputs", {}).values():
        for items in ui.values():
            if isinstance(items, list):
                files += [i for i in items if isinstance(i, dict) and "filename" in i]
    return files


def apply_overrides(prompt: dict, overrides: list[str]) -> dict:
    """``NODE.INPUT=VALUE`` assignments; VALUE is parsed as JSON when it can be (numbers, booleans), else a string."""
    for item in overrides:
        target, _, raw = item.partition("=")
        node, _, name = target.partition(".")
        if node not in prompt or not name:
            raise SystemExit(f"--set {item!r}: expected NODE_ID.INPUT=VALUE with a node id of the workflow "
                             f"({', '.join(sorted(prompt, key=int))})")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        prompt[node]["inputs"][name] = value
    return prompt


def read_workflow(path: Path) -> dict:
    """An API-format workflow from ``path``; a clear error for a missing file, bad JSON or a UI-format workflow."""
    if not path.is_file():
        raise FileNotFoundError(f"workflow {str(path)!r} " + ("is not a file" if path.exists() else "does not exist"))
    try:
        prompt = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"workflow {path.name} is not valid JSON ({e})") from None
    if not isinstance(prompt, dict):
        raise ValueError(f"workflow {path.name} is not a JSON object of nodes")
    if "nodes" in prompt:
        raise ValueError(f"{path} is a UI workflow; use its *_api.json twin (File > Export (API))")
    return prompt


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, help="an API-format workflow JSON (File > Export (API))")
    parser.add_argument("--server", default="127.0.0.1:8188", help="host:port of ComfyUI")
    parser.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="change a widget value before queueing (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to download the outputs into")
    args = parser.parse_args(argv)
    try:
        prompt = read_workflow(args.workflow)
        apply_overrides(prompt, args.set)
        client = ComfyClient(args.server)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def show(message: dict) -> None:
        if message.get("type") == "progress":
            d = message["data"]
            print(f"\rnode {d.get('node')}: {d['value']}/{d['max']}", end="", flush=True)
        elif message.get("type") == "executing" and message["data"].get("node") is not None:
            print(f"\nrunning node {message['data']['node']}", flush=True)

    try:
        entry = client.run(prompt, show)
    except ComfyError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # refused, reset, unreachable, timed out (URLError is an OSError too)
        reason = getattr(e, "reason", None) or e.strerror or e
        print(f"error: cannot talk to ComfyUI at {client.host}:{client.port} ({reason}): start ComfyUI there or "
              "pass --server HOST:PORT", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: stopped waiting (the prompt may still run on the server)", file=sys.stderr)
        return 130
    finally:
        client.close()
    args.out.mkdir(parents=True, exist_ok=True)
    for f in output_files(entry):
        path = args.out / f["filename"]
        path.write_bytes(client.view(f["filename"], f.get("subfolder", ""), f.get("type", "output")))
        print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
