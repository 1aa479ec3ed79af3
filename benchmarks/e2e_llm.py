"""The end-to-end LLM decoding benchmark as a script: ``python benchmarks/e2e_llm.py [options]``.

The same as ``python -m macko_spmv e2e``; the code and the method notes are
in macko_spmv/e2e.py, ``--help`` lists the options.
"""

import os
import sys

try:
    from macko_spmv.e2e import main
except ImportError:
    # Run from a checkout with the extension built in place (not installed):
    # the package is the folder next to this one.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from macko_spmv.e2e import main

if __name__ == "__main__":
    sys.exit(main())
