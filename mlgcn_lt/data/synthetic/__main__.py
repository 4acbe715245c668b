"""``python -m mlgcn_lt.data.synthetic``: generate the synthetic data set (see :func:`mlgcn_lt.data.synthetic.main`)."""

import sys

from mlgcn_lt.data.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
