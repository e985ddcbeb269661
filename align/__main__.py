# python -m align --help   (the same as the `align` command; used by `accelerate launch -m align`)
from align.cli import main

raise SystemExit(main())
