from benchmarks._cli import main

raise SystemExit(main())
