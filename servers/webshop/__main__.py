from servers.webshop.cli import main

raise SystemExit(main())
