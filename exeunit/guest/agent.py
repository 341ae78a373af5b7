"""The resident agent: runs inside an activity's container and spawns its commands.

The daemon mounts this one file read-only into the container and starts it with the image's own
python3 (standard library only, Python 3.6 or newer). It connects to a unix socket the daemon
listens on (in a directory mounted read-only, so nothing in the container can replace it) and
serves one command at a time:

    frame   = length (4 bytes, big endian, of kind + payload) | kind (1 byte) | payload
    daemon  -> agent: RUN  (JSON {"argv": [...], "env": {...}, "workdir": "..."})
                      KILL (empty: SIGKILL the command's process group)
    agent -> daemon:  HELLO (JSON {"version": 1}) once, on connecting
                      OUT / ERR (raw bytes of the command's stdout / stderr)
                      EXIT (JSON {"code": int}) when the command is over

A command is over when its process has exited and its output pipes are drained, or idle for
DRAIN_IDLE seconds after the exit: a background child that keeps the pipes open keeps running,
but does not hold up the next command. The agent runs with exactly the container's privileges;
the daemon trusts nothing it says.
"""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HELLO, RUN, KILL, OUT, ERR, EXIT = b"H", b"R", b"K", b"O", b"E", b"X"
HEADER = struct.Struct(">I")
MAX_FRAME = 16 << 20
READ_CHUNK = 256 << 10
DRAIN_IDLE = 0.2


class Link:
    def __init__(self, sock):
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, kind, payload=b""):
        with self.lock:
            self.sock.sendall(HEADER.pack(len(payload) + 1) + kind + payload)

    def receive(self):
        header = self._exactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if not 1 <= length <= MAX_FRAME:
            raise ValueError("bad frame length")
        frame = self._exactly(length)
        return frame[:1], frame[1:]

    def _exactly(self, count):
        parts = []
        while count:
            part = self.sock.recv(min(count, 1 << 20))
            if not part:
                raise EOFError
            parts.append(part)
            count -= len(part)
        return b"".join(parts)


class Command:
    def __init__(self, link, request):
        self.link = link
        env = dict(os.environ)
        env.update(request.get("env") or {})
        self.process = None
        self.last_output = time.monotonic()
        try:
            self.process = subprocess.Popen(
                request["argv"], env=env, cwd=request.get("workdir") or None, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            code = 127 if isinstance(exc, FileNotFoundError) else 126
            link.send(ERR, ("%s: %s\n" % (request["argv"][0], exc.strerror)).encode())
            link.send(EXIT, json.dumps({"code": code}).encode())
            return
        threading.Thread(target=self._wait, daemon=True).start()

    def _pump(self, pipe, kind, done):
        try:
            while True:
                data = os.read(pipe.fileno(), READ_CHUNK)
                if not data:
                    break
                self.last_output = time.monotonic()
                self.link.send(kind, data)
        except OSError:
            pass
        done.set()

    def _wait(self):
        finished = [threading.Event(), threading.Event()]
        for pipe, kind, done in ((self.process.stdout, OUT, finished[0]), (self.process.stderr, ERR, finished[1])):
            threading.Thread(target=self._pump, args=(pipe, kind, done), daemon=True).start()
        code = self.process.wait()
        while not all(done.is_set() for done in finished):
            if time.monotonic() - self.last_output > DRAIN_IDLE:
                break  # a background child holds the pipes: leave it running
            time.sleep(0.01)
        self.link.send(EXIT, json.dumps({"code": code if code >= 0 else 128 - code}).encode())

    def kill(self):
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except OSError:
                pass


def serve(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    link = Link(sock)
    link.send(HELLO, json.dumps({"version": 1}).encode())
    current = None
    while True:
        kind, payload = link.receive()
        if kind == RUN:
            current = Command(link, json.loads(payload.decode()))
        elif kind == KILL and current is not None:
            current.kill()


def main():
    path = sys.argv[1]
    while True:  # the daemon may restart: connect again
        try:
            serve(path)
        except (OSError, EOFError, ValueError):
            time.sleep(0.5)


if __name__ == "__main__":
    main()
