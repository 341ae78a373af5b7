from exeunit.cli import main

raise SystemExit(main())
