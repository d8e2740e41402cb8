from saas.cli import main

raise SystemExit(main())
