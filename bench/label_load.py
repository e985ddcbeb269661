"""How fast does the labelling server take judgments? N simulated annotators label in parallel over the API.

    python bench/label_load.py --annotators 20 --overlap 2       # prints judgments/s and latency percentiles

Starts `align label` on the bundled 64 pairs in a temporary directory, then each annotator loops next_pair ->
submit_label through gradio_client until no pair is left for them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from gradio_client import Client

from align.labelling.store import LabelStore
from align.ui.label_process import LabelServer, users_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--overlap", type=int, default=2)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    names = [f"annotator{i:02d}" for i in range(args.annotators)]
    server = LabelServer(["--pairs", "bundled:prefs_test", "--db", str(work / "labels.db"), "--overlap",
                          str(args.overlap)], work / "server.log", users=users_env(names))
    latencies: list[float] = []
    lock = threading.Lock()

    def annotate(name: str) -> None:
        client = Client(server.url, auth=(name, f"{name}-pw"), verbose=False)
        while True:
            started = time.perf_counter()
            pair = client.predict(api_name="/next_pair")
            if not pair.get("item_id"):
                return
            client.predict(item_id=pair["item_id"], choice="A", reason="", api_name="/submit_label")
            with lock:
                latencies.append(time.perf_counter() - started)

    with server:
        threads = [threading.Thread(target=annotate, args=(n,)) for n in names]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - started
    stored = LabelStore(work / "labels.db").counts()["judgments"]
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{args.annotators} annotators, overlap {args.overlap}: {stored} judgments stored in {seconds:.1f} s "
          f"({stored / seconds:.1f}/s, logins included)")
    print(f"next_pair + submit_label round trip: p50 {cuts[49] * 1000:.0f} ms, p95 {cuts[94] * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
