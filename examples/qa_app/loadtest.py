"""A bounded load test of the QA app: concurrent questions against one, and an upload's job until done.

    python -m examples.qa_app.loadtest --url http://127.0.0.1:8000 --upload tar.txt   # a running app
    python -m examples.qa_app.loadtest --tiny                                         # in-process, tiny models

Prints one JSON object: time to first token (TTFT, seen by the client) of a lone question, p50/p95
TTFT of `--concurrency` simultaneous questions (after an untimed warm-up burst, as the lone question
has an untimed warm-up) and the p95 / single ratio (the acceptance asks for at most 2), how many
answers were lost, how long the upload request took to return, and whether its job's progress
reached done. A benchmark, not a test: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

SAMPLE = ("The tar program saves many files together into a single tape or disk archive, and can restore "
          "individual files from the archive. Use -x to extract, -c to create and -t to list an archive. "
          "The -f option names the archive file; -z filters the archive through gzip.")
QUESTION = "Which option extracts files from an archive?"


def ask_once(client: httpx.Client, question: str) -> dict[str, Any]:
    """One streamed answer: client-side TTFT and total seconds, and whether a "done" event arrived."""
    start = time.perf_counter()
    first, done, error = None, False, None
    with client.stream("POST", "/api/ask", json={"question": question, "mode": "compressed"}) as r:
        if r.status_code != 200:
            return {"ttft": None, "seconds": time.perf_counter() - start, "done": False, "error": r.read().decode()}
        for line in r.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if event["type"] == "token" and first is None:
                first = time.perf_counter() - start
            done = done or event["type"] == "done"
            error = event.get("error") if event["type"] == "error" else error
    seconds = time.perf_counter() - start
    # An empty answer has no token event: its first (and only) answer is the "done" event.
    return {"ttft": first if first is not None else seconds, "seconds": seconds, "done": done, "error": error}


def upload(client: httpx.Client, path: Path | None, timeout: float) -> dict[str, Any]:
    """Upload a file: seconds until the request returned, then poll its job until it ends."""
    name, data = (path.name, path.read_bytes()) if path else ("sample.txt", SAMPLE.encode())
    start = time.perf_counter()
    r = client.post("/api/documents", params={"filename": name}, content=data)
    returned = time.perf_counter() - start
    if r.status_code != 202:
        return {"name": name, "status": r.status_code, "error": r.json().get("error"), "returned_seconds": returned}
    job, stages = r.json()["job"], []
    while job["status"] in ("queued", "running") and time.perf_counter() - start < timeout:
        time.sleep(0.25)
        job = client.get(f"/api/jobs/{job['id']}").json()["job"]
        stages.append(job["stage"])
    return {"name": name, "bytes": len(data), "returned_seconds": round(returned, 3), "status": job["status"],
            "progress": job["progress"], "stages_seen": sorted(set(stages)), "error": job.get("error"),
            "done_seconds": round(time.perf_counter() - start, 1)}


def wait_ready(client: httpx.Client, timeout: float) -> None:
    """Wait until the app answers /api/info (its models load before it serves), so startup is not timed."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            if client.get("/api/info").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the app at {client.base_url} did not answer /api/info within {timeout:.0f} s")
        time.sleep(0.5)


def burst(client: httpx.Client, concurrency: int, tag: str, timeout: float) -> list[dict[str, Any] | None]:
    """`concurrency` questions sent at once (a barrier releases their threads together); their results."""
    barrier, results = threading.Barrier(concurrency), [None] * concurrency

    def worker(i: int) -> None:
        barrier.wait()
        results[i] = ask_once(client, f"{QUESTION} ({tag}{i})")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return results


def run(url: str, upload_path: Path | None, concurrency: int, repeats: int, timeout: float) -> dict[str, Any]:
    """The whole load test against the app at `url`."""
    with httpx.Client(base_url=url, timeout=timeout) as client:
        wait_ready(client, timeout)
        up = upload(client, upload_path, timeout)
        ask_once(client, QUESTION)  # warm-up: first-call costs are not what is measured
        single = [ask_once(client, QUESTION) for _ in range(repeats)]
        # A burst's first batch pays first-call costs of its tensor sizes (~0.7 s measured in-process),
        # as the lone question's warm-up above does: one untimed burst, then the timed one.
        burst(client, concurrency, "warm-up ", timeout)
        results = burst(client, concurrency, "", timeout)
    single_ttft = statistics.median(r["ttft"] for r in single)
    ttfts = sorted(r["ttft"] for r in results if r and r["done"])
    p95 = statistics.quantiles(ttfts, n=20, method="inclusive")[18] if len(ttfts) > 1 else (ttfts or [None])[0]
    return {"url": url, "upload": up,
            "single": {"ttft_median": round(single_ttft, 3),
                       "seconds_median": round(statistics.median(r["seconds"] for r in single), 3)},
            "concurrent": {"n": concurrency, "answered": len(ttfts), "lost": concurrency - len(ttfts),
                           "ttft_p50": round(statistics.median(ttfts), 3) if ttfts else None,
                           "ttft_p95": round(p95, 3) if p95 is not None else None,
                           "seconds_max": round(max(r["seconds"] for r in results if r), 3)},
            "p95_over_single": round(p95 / single_ttft, 2) if p95 and single_ttft else None}


@contextmanager
def tiny_app(max_new_tokens: int, max_batch: int):
    """The app on tiny random models (untrained ICAE on tiny-llama, mock embeddings), served on a free port."""
    import socket

    import uvicorn
    from llama_index.core.embeddings import MockEmbedding

    from icae_rag import new_compressor

    from .app import create_app
    from .service import Settings

    compressor = new_compressor("icae", device="cpu", decoder="tiny-llama", span_tokens=32, ratio=4, lora_r=4,
                                lora_alpha=8)
    with tempfile.TemporaryDirectory() as data_dir, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        settings = Settings(data_dir=Path(data_dir), max_new_tokens=max_new_tokens, max_batch=max_batch)
        app = create_app(settings, compressor=compressor,
                         embed_model=MockEmbedding(embed_dim=64))
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def main(argv: list[str] | None = None) -> int:
    """Run the load test and print its JSON report."""
    p = argparse.ArgumentParser(prog="python -m examples.qa_app.loadtest", description=__doc__.split("\n")[0])
    p.add_argument("--url", help="a running app (default with --tiny: one started in this process)")
    p.add_argument("--tiny", action="store_true", help="start the app here on tiny random models")
    p.add_argument("--upload", type=Path, help="file to upload (default: a short built-in text)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3, help="lone questions timed (median)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length with --tiny")
    p.add_argument("--max-batch", type=int, default=8,
                   help="with --tiny: the app's --max-batch (1: questions one at a time, as before batching)")
    p.add_argument("--timeout", type=float, default=600.0)
    a = p.parse_args(argv)
    if bool(a.url) == a.tiny:
        p.error("pass exactly one of --url and --tiny")
    if a.tiny:
        with tiny_app(a.max_new_tokens, a.max_batch) as url:
            report = run(url, a.upload, a.concurrency, a.repeats, a.timeout)
    else:
        report = run(a.url, a.upload, a.concurrency, a.repeats, a.timeout)
    print(json.dumps(report, indent=2))
    return 0 if report["concurrent"]["lost"] == 0 and report["upload"]["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
