from honed.cli import main

raise SystemExit(main())
