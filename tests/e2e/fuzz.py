"""The schema fuzzer: Schemathesis against a real `motionserve serve`, one run per OpenAPI document.

Documents: the whole app (`/openapi.json`: queue, run, request lookups, storage, files, docs, health,
workers, metrics, history) and each endpoint's own (`/openapi/{endpoint_id}.json`, fal's shape).
Every Schemathesis check is on: no answer may be a 5xx, and every answer's status code, media type,
headers and body must be the ones the document declares. Settings and the reasons for them are in
tests/e2e/schemathesis.toml (with its hooks in fuzz_hooks.py).

The server runs without workers: fuzzed submits only queue (an empty run costs nothing), and the
stateful phase follows the documents' links from each submit to its status, result and cancel with
the real request id. Only loopback is reached (see fuzz_hooks.py for webhooks).

`tests/e2e/test_fuzz.py` runs it with a few examples per operation in `make test`; `make fuzz` runs

    python -m tests.e2e.fuzz --max-examples 100   # FUZZ_EXAMPLES=100 make fuzz

which starts its own server and prints, as its last line, a JSON summary of all documents.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIG = HERE / "schemathesis.toml"
APP_DOCUMENT = "/openapi.json"
# Env vars read by schemathesis.toml: the user key for every route, the admin key for /workers and /metrics.
KEY_ENV, ADMIN_KEY_ENV = "MOTIONSERVE_E2E_FUZZ_KEY", "MOTIONSERVE_E2E_FUZZ_ADMIN_KEY"


def documents(endpoint_ids: list[str]) -> list[str]:
    return [APP_DOCUMENT, *(f"/openapi/{endpoint_id}.json" for endpoint_id in endpoint_ids)]


@dataclass
class FuzzResult:
    document: str
    returncode: int
    output: str
    report: dict[str, Any]

    @property
    def operations(self) -> int:
        return int(self.report.get("operations", {}).get("tested", 0))

    @property
    def examples(self) -> int:
        return int(self.report.get("test_cases", {}).get("generated", 0))

    @property
    def failures(self) -> list[dict[str, Any]]:
        return list(self.report.get("failures", []))

    @property
    def errors(self) -> list[Any]:
        return list(self.report.get("errors", []))

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failures and not self.errors

    def explain(self) -> str:
        return f"schemathesis on {self.document} exited {self.returncode}:\n{self.output[-20000:]}"


def run_schemathesis(
    base_url: str,
    document: str,
    *,
    ca_cert: Path,
    key: str,
    admin_key: str,
    max_examples: int,
    report_dir: Path,
    seed: int | None = None,
    timeout_s: float = 900,
) -> FuzzResult:
    """`schemathesis run` on one document of the server at `base_url`; its JSON report is read back."""
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / (document.strip("/").replace("/", "_") + ".json")
    args = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", base_url + document,
        "--tls-verify", str(ca_cert), "--checks", "all", "--max-examples", str(max_examples),
        "--workers", "1", "--no-color", "--report", "json", "--report-json-path", str(report),
    ]
    if seed is not None:
        args += ["--seed", str(seed)]
    env = {**os.environ, KEY_ENV: key, ADMIN_KEY_ENV: admin_key, "NO_PROXY": "127.0.0.1,localhost"}
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(name, None)  # loopback only, whatever the shell says
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    data = json.loads(report.read_text()) if report.exists() else {}
    return FuzzResult(document, out.returncode, out.stdout + out.stderr, data)


def summary(results: list[FuzzResult], elapsed_s: float) -> dict[str, Any]:
    """What `make fuzz` prints last: totals and, per document, its operations, examples and failures."""
    return {
        "operations": sum(r.operations for r in results),
        "examples": sum(r.examples for r in results),
        "failures": sum(len(r.failures) for r in results),
        "errors": sum(len(r.errors) for r in results),
        "elapsed_s": round(elapsed_s, 1),
        "documents": {
            r.document: {
                "operations": r.operations,
                "examples": r.examples,
                "failures": [{"code": f.get("code"), "title": f.get("title"), "operations": f.get("operations")} for f in r.failures],
                "errors": len(r.errors),
                "exit_code": r.returncode,
            }
            for r in results
        },
    }


def main(argv: list[str] | None = None) -> int:
    from motionserve.endpoints.registry import ENDPOINTS

    from .server import start_server
    from .tls import make_local_ca

    parser = argparse.ArgumentParser(description="Fuzz every OpenAPI document of a fresh server (no workers).")
    parser.add_argument("--max-examples", type=int, default=100, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, reports)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="motionserve-fuzz-"))
    tls = make_local_ca(work / "tls")
    server = start_server(work / "data", tls, log_dir=work / "logs", name="fuzz", workers=False)
    started = time.monotonic()
    results: list[FuzzResult] = []
    try:
        key, admin_key = server.create_key("fuzz"), server.create_key("fuzz-admin", admin=True)
        for document in documents(sorted(ENDPOINTS)):
            result = run_schemathesis(
                server.base_url, document, ca_cert=tls.ca_cert, key=key, admin_key=admin_key,
                max_examples=args.max_examples, report_dir=work / "reports", seed=args.seed, timeout_s=3600,
            )
            results.append(result)
            print(result.output if not result.ok else f"{document}: {result.operations} operations, "
                  f"{result.examples} examples, no failures", flush=True)
    finally:
        server.stop()
        if args.keep:
            print(f"work directory (server log, reports): {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary(results, time.monotonic() - started)), flush=True)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
