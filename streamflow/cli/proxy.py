"""`streamflow proxy`: join M producers (or scorers' selection streams) to K receivers.

The proxy reads every --from sender, forwards their frames unchanged to the
receivers that connect to --endpoint, and ends its own stream only when every
upstream has ended, so each scorer's ledger accounts for every producer's events.
The first Ctrl-C (or SIGTERM) stops reading and ends the downstream cleanly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from producers.proxy import DEFAULT_PROXY_ENDPOINT, ProxyConfig, ProxyError, ProxyStats, run_proxy
from streamflow.cli.common import curve_options, curves_from_args, metrics_options, stop_on_signals
from streamflow.cli.outputs import output_folder
from streamflow.stream.transport import DEFAULT_HWM, MAX_HWM, MAX_KERNEL_BUFFER


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("proxy", help="join several producers to several scorers (or scorers to one sink)",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--from", dest="upstream", action="append", default=[], metavar="ENDPOINT",
                   help="an upstream sender's data endpoint (a producer's --endpoint, or a scorer's "
                        "--selections); repeat for each")
    p.add_argument("--endpoint", default=DEFAULT_PROXY_ENDPOINT,
                   help=f"data endpoint to bind for the receivers (default {DEFAULT_PROXY_ENDPOINT}; "
                        "control on port+1)")
    p.add_argument("--stream-id", type=int, default=0, metavar="N",
                   help="the proxy's own stream id on its END_OF_STREAM (forwarded frames keep their "
                        "producer's; default 0)")
    p.add_argument("--hwm", type=int, default=DEFAULT_HWM, metavar="FRAMES",
                   help=f"frames queued per socket before forwarding blocks, 1 to {MAX_HWM:,} "
                        f"(default {DEFAULT_HWM})")
    p.add_argument("--kernel-buffer", type=int, default=0, metavar="BYTES",
                   help=f"cap the OS socket buffers, at most {MAX_KERNEL_BUFFER:,} bytes: fewer frames queued "
                        "(default 0: the OS default)")
    p.add_argument("--eos-timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the receivers to acknowledge END_OF_STREAM (default 30)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="give up after S seconds without a message from any upstream (default 60)")
    p.add_argument("--name", default="proxy", help="this proxy's name to its senders and in its ledger file "
                   "(default proxy)")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="write the ledger here as ledger-NAME.json (default: print only)")
    p.add_argument("--acked", action="store_true",
                   help="acknowledged delivery on both sides (the upstreams and receivers run --acked too): a frame "
                        "is acknowledged upstream once a receiver acknowledged it, so a killed receiver loses nothing")
    curve_options(p, connects_to="upstream senders", binds="the proxy's downstream socket")
    metrics_options(p)
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    upstream_curve, curve = curves_from_args(args)
    return ProxyConfig(upstream=tuple(args.upstream), endpoint=args.endpoint, stream_id=args.stream_id,
                       hwm=args.hwm, kernel_buffer=args.kernel_buffer, eos_timeout=args.eos_timeout,
                       idle_timeout=args.idle_timeout, name=args.name, upstream_curve=upstream_curve, curve=curve,
                       metrics_port=args.metrics_port, metrics_hold=args.metrics_hold, acked=args.acked)


def report(stats: ProxyStats, name: str, run_dir: str | None) -> None:
    """Print the ledger, and write it to ``run_dir/ledger-NAME.json`` when a run folder is given."""
    ledger = stats.ledger()
    print(ledger.render())
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        ledger.write(Path(run_dir) / f"ledger-{name}.json")


def main(args: argparse.Namespace) -> int:
    if args.run_dir is not None:
        output_folder(args.run_dir, "--run-dir")
    config = config_from_args(args)
    try:
        stats = run_proxy(config, stop_on_signals())
    except ProxyError as exc:  # ended early, downstream ended cleanly: the ledger, then the one-line error
        report(exc.stats, config.name, args.run_dir)
        raise
    report(stats, config.name, args.run_dir)
    if stats.stopped:
        print("streamflow proxy: interrupted; the downstream stream was ended cleanly", file=sys.stderr)
        return 130
    return 0
