"""The ``litejobs`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from litejobs._errors import LiteJobsError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litejobs",
        description="A fenced SQLite job queue, and the tools that prove it correct.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="measure the queue against raw apsw statements",
        description=(
            "Send, receive and delete N small messages through four paths (goqite's "
            "statements raw, litejobs' statements raw, the Queue one message at a time, "
            "and the Queue in batches), interleaved over several rounds on fresh files; "
            "print the median msg/s of each path and their ratios."
        ),
    )
    bench.add_argument("--messages", type=_positive, default=2000, help="per path and round")
    bench.add_argument("--batch", type=_positive, default=16, help="messages per batch call")
    bench.add_argument("--rounds", type=_positive, default=5, help="median over this many")
    bench.add_argument(
        "--synchronous", choices=["OFF", "NORMAL", "FULL", "EXTRA"], default="NORMAL"
    )
    bench.add_argument("--dir", default=None, help="where the temporary files go")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead")
    return parser


def _bench(args: argparse.Namespace) -> int:
    from litejobs._bench import format_result, run_bench

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_bench(
        messages=args.messages,
        batch=args.batch,
        rounds=args.rounds,
        synchronous=args.synchronous,
        directory=args.dir,
        progress=progress,
    )
    print(json.dumps(result.as_dict(), indent=2) if args.json else format_result(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``litejobs`` command; return its exit status."""
    args = _parser().parse_args(argv)
    try:
        return {"bench": _bench}[args.command](args)
    except LiteJobsError as exc:
        print(f"litejobs {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"litejobs {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
