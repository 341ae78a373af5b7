from exeunit.app.cli import main

raise SystemExit(main())
