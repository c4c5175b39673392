"""Dataset fetch+extract speed: binderbox's DataCache against ``curl | tar``.

Generates (once, cached under /tmp/binderbox-bench-data/) a ~1 GB dataset as
``.tar`` and ``.tar.gz`` -- half incompressible bytes, half text-like
numbers, in 1 MB files --, serves it from a loopback HTTP server in a
separate process (``sendfile``), and times in the same run, alternating:

* ``curl -s URL | tar x`` (``tar xz`` for .tar.gz) into a fresh folder, and
* ``DataCache.ensure`` of an entry with that URL into a fresh cache root
  (download, checks, extraction, atomic publish).

Prints MB/s (archive bytes per second) and the ratio DataCache/curl per
format.  Usage: ``python benchmarks/data.py [--size-mb 1000] [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WORK = Path("/tmp/binderbox-bench-data")
FILE_MB = 1


def _text_block(size: int, seed: int) -> bytes:
    line = ",".join(str((seed * 7919 + i * 104729) % 100000) for i in range(16)) + "\n"
    block = bytearray()
    i = 0
    while len(block) < size:
        block += line.replace("1", str(i % 10)).encode()
        i += 1
    return bytes(block[:size])


def make_archives(size_mb: int) -> dict[str, Path]:
    """The .tar and .tar.gz of a ``size_mb`` dataset (cached between runs)."""
    WORK.mkdir(parents=True, exist_ok=True)
    tar_path = WORK / f"dataset-{size_mb}.tar"
    gz_path = WORK / f"dataset-{size_mb}.tar.gz"
    if not tar_path.exists():
        print(f"generating {size_mb} MB dataset...", flush=True)
        half = FILE_MB * 500_000
        tmp = tar_path.with_suffix(".partial")
        with tarfile.open(tmp, "w") as tar:
            for i in range(size_mb // FILE_MB):
                data = os.urandom(half) + _text_block(FILE_MB * 1_000_000 - half, i)
                info = tarfile.TarInfo(f"dataset/sub-{i // 100:03d}/file-{i:05d}.dat")
                info.size = len(data)
                info.mtime = 1_700_000_000
                tar.addfile(info, _Bytes(data))
        tmp.rename(tar_path)
    if not gz_path.exists():
        print("compressing (gzip -6)...", flush=True)
        tmp = gz_path.with_suffix(".partial")
        with tar_path.open("rb") as src, tmp.open("wb") as out:
            subprocess.run(["gzip", "-6", "-c"], stdin=src, stdout=out, check=True)
        tmp.rename(gz_path)
    return {"tar": tar_path, "tar.gz": gz_path}


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos : end], min(end, len(self.data))
        return chunk


def serve(directory: str, port_file: str) -> None:
    """Serve ``directory`` with sendfile (run in a child process)."""
    root = Path(directory)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            size = path.stat().st_size
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.flush()
            with path.open("rb") as f:
                self.connection.sendfile(f)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(httpd.server_address[1]))
    httpd.serve_forever()


def time_curl(url: str, kind: str, out: Path) -> float:
    out.mkdir(parents=True)
    flags = "xzf" if kind == "tar.gz" else "xf"
    start = time.perf_counter()
    subprocess.run(f"curl -sf '{url}' | tar {flags} - -C '{out}'", shell=True, check=True)
    return time.perf_counter() - start


def time_cache(url: str, root: Path) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from binderbox.data import DataCache
    from binderbox.data.requirement import parse_requirements

    # the server is on 127.0.0.1: private hosts allowed (connections still go through the guard)
    cache = DataCache(root=str(root), max_dataset_bytes=10**12, budget=0, allow_private_hosts=True)
    entries = parse_requirements(f'{{"src": "{url}", "projectName": "bench"}}')

    async def run() -> None:
        async for _ in cache.ensure(cache.folders(entries)):
            pass

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start


def extracted_bytes(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``: both tools must have extracted the same."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if name.endswith(".dat"):
                files += 1
                total += path.stat().st_size
    return files, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--formats", default="tar,tar.gz")
    args = parser.parse_args()
    archives = make_archives(args.size_mb)
    port_file = WORK / "port"
    port_file.unlink(missing_ok=True)
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(WORK), str(port_file)])
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        port = int(port_file.read_text())
        socket.create_connection(("127.0.0.1", port)).close()
        scratch = WORK / "out"
        for kind in args.formats.split(","):
            path = archives[kind]
            url = f"http://127.0.0.1:{port}/{path.name}"
            mb = path.stat().st_size / 1e6
            results: dict[str, list[float]] = {"curl | tar": [], "DataCache": []}
            for _ in range(args.rounds):
                for name in results:
                    shutil.rmtree(scratch, ignore_errors=True)
                    if name == "DataCache":
                        seconds = time_cache(url, scratch)
                    else:
                        seconds = time_curl(url, kind, scratch)
                    results[name].append(seconds)
                    files, total = extracted_bytes(scratch)
                    expected = (args.size_mb // FILE_MB, args.size_mb // FILE_MB * FILE_MB * 10**6)
                    assert (files, total) == expected, f"{name} extracted {files} files, {total} B"
            shutil.rmtree(scratch, ignore_errors=True)
            print(
                f"\n{kind}: {mb:.0f} MB archive, {args.size_mb} MB extracted, best of {args.rounds}"
            )
            best = {name: min(times) for name, times in results.items()}
            for name, seconds in best.items():
                runs = ", ".join(f"{t:.2f}" for t in results[name])
                print(f"  {name:11s} {seconds:6.2f} s  {mb / seconds:7.1f} MB/s   (runs: {runs})")
            ratio = best["curl | tar"] / best["DataCache"]
            print(f"  DataCache speed / curl|tar speed = {ratio:.2f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()
