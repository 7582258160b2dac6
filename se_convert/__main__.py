from se_convert._cli import main

raise SystemExit(main())
