"""Command line: python -m macko_spmv {demo,bench,e2e,info} [options]."""

import sys


def _demo(argv):
    from .bench.demo import main
    return main(argv)


def _bench(argv):
    from .bench.spmv import main
    return main(argv)


def _info(argv):
    from .info import main
    return main(argv)


def _e2e(argv):
    from .bench.e2e import main
    return main(argv)


COMMANDS = {
    "demo": (_demo, "compress a random pruned matrix, check and time the product"),
    "bench": (_bench, "the SpMV benchmark sweep (CSV, plots) against cuBLAS and cuSPARSE, flushed and back to back"),
    "e2e": (_e2e, "end-to-end generation of a pruned Llama-2-7B-shaped model: prefill, tokens/s, memory, CSV, plots"),
    "info": (_info, "versions this build was made for, and whether this GPU is covered"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m macko_spmv {" + ",".join(COMMANDS) + "} [options]\n")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<6} {summary}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    run, _ = COMMANDS[argv[0]]
    return run(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
