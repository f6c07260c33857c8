from lazyaccept.cli import main

raise SystemExit(main())
