from se_flax.convert._cli import main

raise SystemExit(main())
