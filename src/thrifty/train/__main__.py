import sys

from thrifty.train.worker import main

sys.exit(main())
