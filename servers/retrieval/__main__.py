from servers.retrieval.cli import main

raise SystemExit(main())
